"""The one registry of sensitivity metrics; modules are imported on first lookup.

Whether a metric needs calibration data is recorded here as well as on the class, so the API
process can ask (`metric_needs_data`) without importing torch; the conformance tests check that
the two agree.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any, NamedTuple

from workers.metrics._base import Metric


class _Entry(NamedTuple):
    target: str  # "module:Class"
    needs_data: bool


_METRICS: dict[str, _Entry] = {
    "eigen": _Entry("workers.metrics.eigen:Eigen", True),
    "fisher": _Entry("workers.metrics.fisher:Fisher", True),
    "gauss_newton": _Entry("workers.metrics.gauss_newton:GaussNewton", True),
    "hutchinson": _Entry("workers.metrics.hutchinson:Hutchinson", True),
    "input_covariance": _Entry("workers.metrics.input_covariance:InputCovariance", True),
    "loss_delta": _Entry("workers.metrics.loss_delta:LossDelta", True),
    "mse": _Entry("workers.metrics.mse:Mse", False),
}


def metric_names() -> tuple[str, ...]:
    return tuple(sorted(_METRICS))


def _unknown(name: str) -> ValueError:
    return ValueError(f"metric: unknown {name!r} (valid: {', '.join(metric_names())})")


def metric_needs_data(name: str) -> bool:
    """Whether metric `name` needs calibration data (torch-free); ValueError listing the valid names."""
    if name not in _METRICS:
        raise _unknown(name)
    return _METRICS[name].needs_data


def get_metric(name: str, options: Mapping[str, Any] | None = None) -> Metric:
    """The metric `name` configured with `options`; ValueError naming the valid names / options."""
    if name not in _METRICS:
        raise _unknown(name)
    module, cls_name = _METRICS[name].target.split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    options = dict(options or {})
    if dataclasses.is_dataclass(cls):
        valid = [f.name for f in dataclasses.fields(cls) if f.init]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(
                f"options.{unknown[0]}: unknown option for metric {name!r} (valid: {', '.join(valid)})"
            )
    metric = cls(**options)
    if not metric.available():
        raise ValueError(f"metric: {name!r} is not available (an optional dependency is missing)")
    return metric
