"""The job functions a queue runs: plain JSON-able arguments in, JSON-able results out.

No database access here and no torch at import time (the modules that need torch are imported
when a job runs), so the process that enqueues jobs can import this module freely. Bad requests
raise `ValueError` (messages start with the field); unreadable inputs raise `ModelLoadError` /
`DatasetError` (both also `ValueError`); failures of the analysis itself raise `AnalysisError`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["ANALYSIS_OPTIONS", "describe_model_job", "inspect_model_job", "run_analysis_job"]

Report = Callable[[float, str], None]

# request["options"] keys the analysis itself reads; every other key goes to the metric.
#   batch_size    largest calibration mini-batch (lowered to fit the free memory, halved on out-of-memory)
#   max_samples   cap on calibration samples (text: windows, default 64)
#   max_length    cap on sequence length (text: window length in tokens, default 128)
#   device        "auto" (CUDA when available, else CPU) | "cpu" | "cuda" | "cuda:N"
#   hardware      roofline latency: "t4" | "a100" | "h100" | {name, peak_ops: {bits: ops/s}, bandwidth}
#                 (without a dataset, MACs come from a zero sample of the recorded input shape)
#   latency_table {layer: {candidate: ms}} measured latencies (instead of `hardware`)
#   grouping      "layer" | "block" | [name prefixes]: decision units
#   ties          "auto" (tie fusable projections found in the traced pass) | "none"
#   refine_bits   average bits: after the analysis, solve there and correct the plan for
#                 interactions measured on the calibration data (workers.refine); the rounds,
#                 predicted vs measured, land in the table's provenance["refinement"]
#   refine_rounds rounds of that loop (one forward + backward each), default 3
ANALYSIS_OPTIONS = {
    "batch_size": 256,
    "max_samples": None,
    "max_length": None,
    "device": "auto",
    "hardware": None,
    "latency_table": None,
    "grouping": "layer",
    "ties": "auto",
    "refine_bits": None,
    "refine_rounds": 3,
}
_REQUEST_FIELDS = ("model", "dataset_path", "candidates", "metric", "seed", "options")


def inspect_model_job(source: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The layer inventory of a model: [{name, kind, weight_shape, parameters}, ...]."""
    from workers.models import ModelSource, inspect_model

    return inspect_model(ModelSource.from_dict(source))


def describe_model_job(source: Mapping[str, Any]) -> dict[str, Any]:
    """{"layers": the layer inventory, "inputs": what one call takes (workers.models.input_signature)}."""
    from workers.models import ModelSource, describe_model

    return describe_model(ModelSource.from_dict(source))


def run_analysis_job(request: Mapping[str, Any], report: Report | None = None) -> dict[str, Any]:
    """Run one sensitivity analysis; returns SensitivityTable.to_dict() plus "seed" and "timings".

    request = {"model": {format, path, architecture, hyperparams}, "dataset_path": str | None,
    "candidates": [names] (default DEFAULT_CANDIDATES), "metric": "hutchinson", "seed": int,
    "options": {<ANALYSIS_OPTIONS keys>, <metric options>}}; model.format "hf" takes a Hugging
    Face directory, and then dataset_path may be text (JSONL or lines) tokenized by its tokenizer. `report(fraction, message)` gets
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
    from workers.costs import parse_hardware
    from workers.units import validate_grouping, validate_ties

    hardware = None if analysis_options["hardware"] is None else parse_hardware(analysis_options["hardware"])
    grouping = validate_grouping(analysis_options["grouping"])
    ties = validate_ties(analysis_options["ties"])
    if hardware is not None and analysis_options["latency_table"] is not None:
        raise ValueError("options.latency_table: give either a latency table or a hardware profile, not both")
    dataset_path = request.get("dataset_path")
    if dataset_path is not None and (not isinstance(dataset_path, str) or not dataset_path):
        raise ValueError("dataset_path: must be a non-empty string or null")
    refine_bits, refine_rounds = analysis_options["refine_bits"], analysis_options["refine_rounds"]
    if refine_bits is not None:
        if isinstance(refine_bits, bool) or not isinstance(refine_bits, int | float) or not 0 < refine_bits < 64:
            raise ValueError(f"options.refine_bits: must be average bits per weight in (0, 64), got {refine_bits!r}")
        if dataset_path is None:
            raise ValueError("options.refine_bits: the refinement measures plans on calibration data: give a dataset")
    if isinstance(refine_rounds, bool) or not isinstance(refine_rounds, int) or not 0 <= refine_rounds <= 20:
        raise ValueError(f"options.refine_rounds: must be an integer in 0..20, got {refine_rounds!r}")

    from workers.metrics import get_metric

    metric = get_metric(request.get("metric") or "hutchinson", metric_options)
    if metric.needs_data and dataset_path is None:
        from workers.errors import DatasetError

        raise DatasetError(f"dataset: the {metric.name} metric needs calibration data")

    report(0.0, "loading model")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    from workers.analysis import analyse
    from workers.data import TEXT_DEFAULTS, load_calibration
    from workers.models import load_model

    model = load_model(source)
    timings["load_model_s"] = time.perf_counter() - started

    started = time.perf_counter()
    calibration = None
    if dataset_path is not None:
        report(0.0, "loading calibration data")
        from workers.data import sniff

        tokenizer = None
        if source.format == "hf" and os.path.isfile(dataset_path) and sniff(dataset_path) == "text":
            from workers.hf import load_tokenizer

            tokenizer = load_tokenizer(source.path)
        max_length = analysis_options["max_length"]
        positions = _max_positions(model)
        if positions is not None:
            if max_length is None and tokenizer is not None:
                # text: the default window (TEXT_DEFAULTS), not the whole context (8192 for SmolLM2)
                max_length = min(TEXT_DEFAULTS["max_length"], positions)
            elif max_length is None or max_length > positions:
                max_length = positions  # longer windows would index past the position embeddings
        calibration = load_calibration(
            dataset_path,
            batch_size=analysis_options["batch_size"],
            max_samples=analysis_options["max_samples"],
            max_length=max_length,
            token_ids=source.format == "hf",
            tokenizer=tokenizer,
            causal_lm=bool(getattr(model, "bitplan_causal_lm", False)),
        )
    timings["load_data_s"] = time.perf_counter() - started

    latency_table = None
    if analysis_options["latency_table"] is not None:
        from workers.costs import parse_latency_table
        from workers.models import find_layers

        latency_table = parse_latency_table(
            analysis_options["latency_table"], [info.name for info, _ in find_layers(model)], [q.name for q in candidates]
        )

    cost_sample, no_cost_sample = None, None
    if calibration is None:
        from workers.costs import synthetic_sample
        from workers.models import input_signature

        try:
            signature = input_signature(model, source)
        except Exception as exc:  # noqa: BLE001 - an unreadable signature only costs the MACs
            signature, no_cost_sample = None, f"the model's input signature cannot be read ({exc})"
        if no_cost_sample is None:
            cost_sample, no_cost_sample = synthetic_sample(signature, analysis_options["max_length"])

    table = analyse(
        model,
        calibration,
        candidates,
        metric,
        seed=seed,
        report=report,
        timings=timings,
        device=analysis_options["device"],
        hardware=hardware,
        latency_table=latency_table,
        cost_sample=cost_sample,
        no_cost_sample=no_cost_sample,
        grouping=grouping,
        ties=ties,
    )
    if refine_bits is not None:
        started = time.perf_counter()
        table.provenance["refinement"] = _refine(model, calibration, table, metric, refine_bits, refine_rounds, report)
        timings["refine_s"] = time.perf_counter() - started
    timings["total_s"] = time.perf_counter() - total_started
    return {**table.to_dict(), "seed": seed, "timings": timings}


def _refine(model, calibration, table, metric, bits: float, rounds: int, report: Report) -> dict[str, Any]:
    """The refinement at `bits` as JSON; an unreachable budget is reported there, not raised (the
    analysis itself succeeded)."""
    from solver import InfeasibleBudget, average_bits_budget
    from workers.refine import refine_plan

    budget = average_bits_budget(table.to_problem(), float(bits))
    try:
        result = refine_plan(
            model, calibration, table, [budget], rounds=rounds,
            output_loss=getattr(metric, "output_loss", "kl"), report=lambda fraction, message: report(1.0, message),
        )
    except InfeasibleBudget as exc:
        return {"average_bits": bits, "error": str(exc)}
    return {"average_bits": bits, **result.to_dict()}


def _max_positions(model) -> int | None:
    """The longest sequence a HF model's position embeddings allow, when its config says."""
    config = getattr(model, "config", None)
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
