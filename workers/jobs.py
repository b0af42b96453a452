"""The job functions a queue runs: a request of workers.requests in, JSON-able results out.

No database access here and no torch at import time (the modules that need torch are imported
when a job runs), so the process that enqueues jobs can import this module freely. A job function
trusts its request: `from_dict` checked it (a Mapping given instead, as tests and benchmarks do, is
parsed by it first, so bad fields raise `RequestError`). Unreadable inputs raise `ModelLoadError` /
`DatasetError` (both `ValueError`); failures of the analysis itself raise `AnalysisError`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from workers.errors import AnalysisError
from workers.requests import ANALYSIS_OPTIONS, AnalysisRequest, ExportRequest

__all__ = ["ANALYSIS_OPTIONS", "describe_model_job", "inspect_model_job", "load_analysis_calibration", "run_analysis_job",
           "run_export_job", "run_shard_job"]

Report = Callable[[float, str], None]


def inspect_model_job(source: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The layer inventory of a model: [{name, kind, weight_shape, parameters}, ...]."""
    from workers.models import ModelSource, inspect_model

    return inspect_model(ModelSource.from_dict(source))


def describe_model_job(source: Mapping[str, Any]) -> dict[str, Any]:
    """{"layers": the layer inventory, "inputs": what one call takes (workers.models.input_signature)}."""
    from workers.models import ModelSource, describe_model

    return describe_model(ModelSource.from_dict(source))


def run_analysis_job(request: AnalysisRequest | Mapping[str, Any], report: Report | None = None) -> dict[str, Any]:
    """Run one sensitivity analysis; returns SensitivityTable.to_dict() plus "seed" and "timings".
    `report(fraction, message)` gets progress in [0, 1]; the metric's messages carry an ETA. With
    `request.shard_sums` (a sharded analysis's merge) the statistics come from its shards' sums and
    nothing is measured; the table is the one the unsplit analysis gives."""
    report = report or (lambda fraction, message: None)
    total_started = time.perf_counter()
    if not isinstance(request, AnalysisRequest):
        request = AnalysisRequest.from_dict(request)

    from workers.costs import parse_hardware
    from workers.metrics import get_metric
    from workers.quantizers import DEFAULT_CANDIDATES, parse_candidates
    from workers.units import validate_grouping, validate_ties

    source, seed = request.model, request.seed
    candidates = parse_candidates(DEFAULT_CANDIDATES if request.candidates is None else request.candidates)
    analysis_options = request.analysis_options
    hardware = None if analysis_options["hardware"] is None else parse_hardware(analysis_options["hardware"])
    grouping = validate_grouping(analysis_options["grouping"])  # the normal form: None is "layer"
    ties = validate_ties(analysis_options["ties"])
    refine_bits, refine_rounds = analysis_options["refine_bits"], analysis_options["refine_rounds"]
    metric = get_metric(request.metric, request.metric_options)

    timings: dict[str, float] = {}
    model, calibration, weights = _load_inputs(request, metric, report, timings)
    from workers.analysis import analyse
    from workers.sharding import merged_measure
    from workers.spot_check import CHECKED_METRICS, spot_check
    from workers.table import table_warnings

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
        provenance={"weight_loading": weights, **({"shards": len(request.shard_sums)} if request.shard_sums else {})},
        measure=merged_measure(metric, request.shard_sums) if request.shard_sums else None,
    )
    if calibration is not None and metric.name in CHECKED_METRICS:
        started = time.perf_counter()
        table.provenance["spot_check"] = spot_check(
            model, calibration, table, candidates, layers=analysis_options["spot_checks"], seed=seed,
            output_loss=getattr(metric, "output_loss", "kl"), report=lambda fraction, message: report(1.0, message),
        )
        timings["spot_check_s"] = time.perf_counter() - started
        table.warnings = table_warnings(table)
    if refine_bits is not None:
        started = time.perf_counter()
        table.provenance["refinement"] = _refine(model, calibration, table, metric, refine_bits, refine_rounds, report)
        timings["refine_s"] = time.perf_counter() - started
    timings["total_s"] = time.perf_counter() - total_started
    return {**table.to_dict(), "seed": seed, "timings": timings}


def run_shard_job(request: AnalysisRequest | Mapping[str, Any], report: Report | None = None) -> dict[str, Any]:
    """One shard of a sharded analysis (`request.shard` = (index, count)): the metric's per-sample sums
    over its share of the calibration samples (workers.sharding), for the analysis's merge."""
    report = report or (lambda fraction, message: None)
    started = time.perf_counter()
    if not isinstance(request, AnalysisRequest):
        request = AnalysisRequest.from_dict(request)
    if request.shard is None:
        raise AnalysisError("shard: a shard job needs [index, count]")
    from workers.metrics import get_metric
    from workers.quantizers import DEFAULT_CANDIDATES, parse_candidates
    from workers.sharding import measure_share

    candidates = parse_candidates(DEFAULT_CANDIDATES if request.candidates is None else request.candidates)
    metric = get_metric(request.metric, request.metric_options)
    timings: dict[str, float] = {}
    model, calibration, _ = _load_inputs(request, metric, report, timings)
    if calibration is None:
        raise AnalysisError(f"dataset: the {metric.name} metric needs calibration data")
    index, count = request.shard
    measured = time.perf_counter()
    sums = measure_share(model, calibration, candidates, metric, seed=request.seed, index=index, count=count,
                         device=request.analysis_options["device"], report=report)
    timings["measure_s"] = time.perf_counter() - measured
    timings["total_s"] = time.perf_counter() - started
    return {**sums, "timings": timings}


def _load_inputs(request: AnalysisRequest, metric, report: Report, timings: dict[str, float]):
    """The model (resident, or streamed when its weights exceed the job's memory) and the calibration
    data of an analysis or one of its shards: (model, calibration or None, the weight-loading record)."""
    from workers.analysis import resolve_device
    from workers.models import load_model
    from workers.streaming import load_streamed, plan_weights

    source, dataset_path = request.model, request.dataset_path
    analysis_options = request.analysis_options
    refine_bits = analysis_options["refine_bits"]
    report(0.0, "loading model")
    started = time.perf_counter()
    # weights that do not fit the job's memory are streamed block by block (workers.streaming)
    weights = plan_weights(source, getattr(metric, "streaming", None), resolve_device(analysis_options["device"]),
                           metric.name)
    if weights["weights"] == "streamed":
        if refine_bits is not None:
            raise AnalysisError(f"{weights['reason']}: options.refine_bits measures whole-model forwards, which need"
                                " every weight resident; leave refine_bits out to analyse with streamed weights")
        report(0.0, "loading model (weights streamed block by block)")
        model = load_streamed(source.path, weights["reason"])
    else:
        model = load_model(source)
    timings["load_model_s"] = time.perf_counter() - started

    started = time.perf_counter()
    calibration = None
    if dataset_path is not None:
        report(0.0, "loading calibration data")
        calibration = load_analysis_calibration(request, model)
    timings["load_data_s"] = time.perf_counter() - started
    return model, calibration, weights


def load_analysis_calibration(request: AnalysisRequest, model):
    """The calibration data of an analysis as its metric saw it (windows, samples, batch size), for
    `model`; what an evaluation's refinement measures on (workers.evaluation_jobs)."""
    from workers.data import TEXT_DEFAULTS, load_calibration, sniff

    source, dataset_path = request.model, request.dataset_path
    analysis_options = request.analysis_options
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
    return load_calibration(
        dataset_path,
        batch_size=analysis_options["batch_size"],
        max_samples=analysis_options["max_samples"],
        max_length=max_length,
        token_ids=source.format == "hf",
        tokenizer=tokenizer,
        causal_lm=bool(getattr(model, "bitplan_causal_lm", False)),
    )


def run_export_job(request: ExportRequest | Mapping[str, Any], report: Report | None = None) -> dict[str, Any]:
    """Write one plan in an export format to request.out; returns {filename, media_type, warnings}."""
    if not isinstance(request, ExportRequest):
        request = ExportRequest.from_dict(request)
    from workers.exports import ExportPlan, get_exporter

    plan = ExportPlan.from_table(request.table, request.assignment, model=request.model.to_dict(),
                                 root_type=request.root_type)
    written = get_exporter(request.format).write(plan, request.out, report)
    return {"filename": written.filename, "media_type": written.media_type, "warnings": list(written.warnings)}


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
