"""The job functions a queue runs: plain JSON-able arguments in, JSON-able results out.

No database access here and no torch at import time (the modules that need torch are imported
when a job runs), so the process that enqueues jobs can import this module freely. Bad requests
raise `ValueError` (messages start with the field); unreadable inputs raise `ModelLoadError` /
`DatasetError` (both also `ValueError`); failures of the analysis itself raise `AnalysisError`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["ANALYSIS_OPTIONS", "inspect_model_job", "run_analysis_job"]

Report = Callable[[float, str], None]

# request["options"] keys the analysis itself reads; every other key goes to the metric.
ANALYSIS_OPTIONS = {"batch_size": 256, "max_samples": None}
_REQUEST_FIELDS = ("model", "dataset_path", "candidates", "metric", "seed", "options")


def inspect_model_job(source: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The layer inventory of a model: [{name, kind, weight_shape, parameters}, ...]."""
    from workers.models import ModelSource, inspect_model

    return inspect_model(ModelSource.from_dict(source))


def run_analysis_job(request: Mapping[str, Any], report: Report | None = None) -> dict[str, Any]:
    """Run one sensitivity analysis; returns SensitivityTable.to_dict() plus "seed" and "timings".

    request = {"model": {format, path, architecture, hyperparams}, "dataset_path": str | None,
    "candidates": [names] (default DEFAULT_CANDIDATES), "metric": "hutchinson", "seed": int,
    "options": {batch_size, max_samples, <metric options>}}. `report(fraction, message)` gets
    progress in [0, 1]; the metric's messages carry an ETA.
    """
    report = report or (lambda fraction, message: None)
    total_started = time.perf_counter()
    if not isinstance(request, Mapping):
        raise ValueError("request: must be a JSON object")
    unknown = sorted(set(request) - set(_REQUEST_FIELDS))
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown request field (valid: {', '.join(_REQUEST_FIELDS)})")

    # Validate everything cheap before loading anything heavy.
    from workers.models import ModelSource
    from workers.quantizers import DEFAULT_CANDIDATES, parse_candidates

    if "model" not in request:
        raise ValueError("model: required")
    source = ModelSource.from_dict(request["model"])
    names = request.get("candidates")
    candidates = parse_candidates(DEFAULT_CANDIDATES if names is None else names)
    seed = request.get("seed", 0)
    if seed is None:
        seed = 0
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed: must be a non-negative integer, got {seed!r}")
    options = request.get("options") or {}
    if not isinstance(options, Mapping):
        raise ValueError("options: must be a JSON object")
    analysis_options = {k: options.get(k, v) for k, v in ANALYSIS_OPTIONS.items()}
    metric_options = {k: v for k, v in options.items() if k not in ANALYSIS_OPTIONS}
    dataset_path = request.get("dataset_path")
    if dataset_path is not None and (not isinstance(dataset_path, str) or not dataset_path):
        raise ValueError("dataset_path: must be a non-empty string or null")

    from workers.metrics import get_metric

    metric = get_metric(request.get("metric") or "hutchinson", metric_options)
    if metric.needs_data and dataset_path is None:
        from workers.errors import DatasetError

        raise DatasetError(f"dataset: the {metric.name} metric needs calibration data")

    report(0.0, "loading model")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    from workers.analysis import analyse
    from workers.data import load_calibration
    from workers.models import load_model

    model = load_model(source)
    timings["load_model_s"] = time.perf_counter() - started

    started = time.perf_counter()
    calibration = None
    if dataset_path is not None:
        report(0.0, "loading calibration data")
        calibration = load_calibration(
            dataset_path,
            batch_size=analysis_options["batch_size"],
            max_samples=analysis_options["max_samples"],
        )
    timings["load_data_s"] = time.perf_counter() - started

    table = analyse(model, calibration, candidates, metric, seed=seed, report=report, timings=timings)
    timings["total_s"] = time.perf_counter() - total_started
    return {**table.to_dict(), "seed": seed, "timings": timings}
