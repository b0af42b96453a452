"""The one registry of sensitivity metrics (solver.registry's shape); modules are imported on first lookup.

Whether a built-in metric needs calibration data is recorded here as well as on the class, so the
API process can ask (`metric_needs_data`) without importing torch; the conformance tests check that
the two agree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from solver.registry import Registry
from workers.metrics._base import Metric

METRICS: Registry[Metric] = Registry(
    "metric",
    {
        "eigen": "workers.metrics.eigen:Eigen",
        "fisher": "workers.metrics.fisher:Fisher",
        "gauss_newton": "workers.metrics.gauss_newton:GaussNewton",
        "hutchinson": "workers.metrics.hutchinson:Hutchinson",
        "input_covariance": "workers.metrics.input_covariance:InputCovariance",
        "loss_delta": "workers.metrics.loss_delta:LossDelta",
        "mse": "workers.metrics.mse:Mse",
        "sampled_gauss_newton": "workers.metrics.sampled_gauss_newton:SampledGaussNewton",
    },
)

# What an analysis uses when the request names no metric. bench/quality.py measured the choice: on
# SmolLM2-135M and EfficientNet-Lite0 it ranks the measured single-layer loss changes best (Spearman
# 0.98 / 0.95) and its plans beat input_covariance's at 4 and 3 bits. input_covariance remains the one
# that streams a model too large to hold (workers.streaming).
DEFAULT_METRIC = "sampled_gauss_newton"

# Torch-free answers for the built-ins; a registered metric answers from its class.
NEEDS_DATA = {"eigen": True, "fisher": True, "gauss_newton": True, "hutchinson": True,
               "input_covariance": True, "loss_delta": True, "mse": False,
              "sampled_gauss_newton": True}

# Metrics whose measurement can be split across workers (Metric.shardable), torch-free for the API. Adaptive
# stopping (hutchinson, eigen) decides on all probes at once, and the rest are not written as per-sample sums.
SHARDABLE = ("sampled_gauss_newton",)


# Torch-free option names of the built-ins (their constructors' keyword arguments), so the API can
# refuse an unknown option at submit; tests/conformance checks them against the classes.
OPTION_NAMES = {
    "eigen": ("tolerance", "max_iterations", "layer_chunk", "output_loss", "loss"),
    "fisher": ("sample_chunk", "exact_outputs", "output_loss", "loss"),
    "gauss_newton": ("loss", "output_loss", "form", "groups", "candidate_batch"),
    "hutchinson": ("stop", "tolerance", "decide_at", "decision_confidence", "decision_tolerance", "min_probes",
                   "max_probes", "max_seconds", "probe_batch", "shrink", "loss", "output_loss"),
    "input_covariance": ("weighting", "folds", "fisher_batches", "loss", "streaming"),
    "loss_delta": ("output_loss",),
    "mse": ("normalize",),
    "sampled_gauss_newton": ("draws", "groups", "loss", "output_loss"),
}


def metric_option_names(name: str) -> tuple[str, ...]:
    """The option names metric `name` accepts, torch-free for built-ins; ValueError listing the valid
    metric names."""
    if METRICS.peek(name) is None and name in OPTION_NAMES:
        return OPTION_NAMES[name]
    return metric_options(name)


def metric_names() -> tuple[str, ...]:
    return tuple(sorted(METRICS.names()))


def metric_needs_data(name: str) -> bool:
    """Whether metric `name` needs calibration data (torch-free for built-ins); ValueError listing
    the valid names."""
    entry = METRICS.peek(name)
    return entry.needs_data if entry is not None else NEEDS_DATA[name]


def metric_shards(name: str) -> bool:
    """Whether metric `name` can split its calibration samples across workers (options.shards)."""
    entry = METRICS.peek(name)
    return bool(entry.shardable) if entry is not None else name in SHARDABLE


def metric_options(name: str) -> tuple[str, ...]:
    """The option names metric `name` accepts (its constructor's keyword arguments)."""
    cls = type(METRICS.get(name))
    return tuple(f.name for f in dataclasses.fields(cls) if f.init) if dataclasses.is_dataclass(cls) else ()


def get_metric(name: str, options: Mapping[str, Any] | None = None) -> Metric:
    """A fresh metric `name` configured with `options`; ValueError naming the valid names / options.

    Fresh, not the registry's shared instance: a metric's options are its own and `measure` may
    keep per-run state on it."""
    cls = type(METRICS.get(name))
    options = dict(options or {})
    valid = metric_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        listed = ", ".join(valid)
        raise ValueError(f"options.{unknown[0]}: unknown option for metric {name!r} (valid: {listed})")
    return cls(**options)


__all__ = ["METRICS", "SHARDABLE", "get_metric", "metric_names", "metric_needs_data", "metric_options",
           "metric_shards"]
