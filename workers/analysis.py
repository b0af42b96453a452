"""One sensitivity analysis: a metric's per-layer statistics turned into the damage × cost table.

Monotonicity: along a ladder (candidates of one family that differ only in weight bits, e.g.
int2 → int3 → int4 → int8 per channel) a candidate with more bits is never predicted worse than one
with fewer. Estimator noise (or a quantizer grid that happens to fit a layer badly) can invert two
raw damages; the table then gives the higher-bit candidate the lower damage of the two (a running
minimum in ascending bits), keeping the raw value beside it. Candidates on different ladders (per
channel vs group-wise, symmetric vs asymmetric) are not compared.

Device: "auto" takes CUDA when torch sees a GPU, else the CPU; the model and the calibration
tensors are moved there for the whole analysis. Memory (workers.memory): before the metric runs,
one forward + double backward at batch 1–2 is measured and the batch size (at most the one asked
for) and the metric's probe batch are chosen to fit the memory actually free. When the metric still
runs out of memory (an allocator failure of either kind: CUDA's OutOfMemoryError, the CPU
allocator's "can't allocate memory", MemoryError; also when a metric wrapped it) the larger term of
the estimate is halved (batch size, else probe batch) and the metric restarts; out of memory at
batch 1 and probe batch 1 is an AnalysisError saying what to cap. The sizes planned and run, each
back-off and the peak memory (resident set; CUDA allocator peak) are in the provenance.

Static batch: a model exported with a fixed batch dimension (`bitplan_static_batch`, set by
workers.models for such a `.pt2`) is fed batches of exactly that size; the samples that do not fill
a last batch are left out and counted in the provenance.

Streamed weights (a model from workers.streaming.load_streamed): only input_covariance runs on it;
whole forwards (tracing, memory planning) load one block at a time, and each layer's weight is read
from the files when its rows are computed (workers.streaming.layer_weights).

Costs: with calibration data one sample is traced (workers.costs) for MACs, BOPs and latency, and
the same pass finds the fusable projections that `ties="auto"` ties (workers.units).
"""

from __future__ import annotations

import dataclasses
import gc
import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from workers.costs import HardwareProfile, bops, roofline_ms, trace_layers
from workers.data import Calibration
from workers.errors import AnalysisError, DatasetError
from workers.memory import (
    SAFETY,
    PassCost,
    PeakMeter,
    choose_batches,
    free_memory,
    is_allocator_failure,
    measure_pass_cost,
    pass_kind,
    process_peak,
    release_freed_memory,
)
from workers.metrics import Metric, MetricContext
from workers.metrics._loss import loss_name, uses_label_free
from workers.models import find_layers
from workers.quantizers import Quantizer
from workers.streaming import layer_weights, place, store_of, streamed_forward
from workers.table import CandidateRow, LayerRow, SensitivityTable, table_warnings
from workers.units import group_layers

__all__ = ["analyse", "enforce_monotone", "is_out_of_memory", "resolve_device"]

Report = Callable[[float, str], None]
_OOM_AT_ONE = (
    "out of memory on {device} even with batch size 1: lower options.max_length (sequence length) or"
    " the model size, or run on a device with more memory"
)
_MEASURE_SHARE = 0.95  # of the progress bar; quantizing every layer × candidate is the rest


def resolve_device(device: str | None) -> torch.device:
    """"auto" (or None): CUDA when available, else CPU; "cpu", "cuda", "cuda:N" as asked."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, str) or not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
        raise ValueError(f"options.device: must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"options.device: {device!r} asked for, but torch sees no CUDA device here")
        try:
            resolved = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"options.device: {exc}") from exc
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"options.device: {device!r} but only {torch.cuda.device_count()} CUDA device(s)")
        return resolved
    return torch.device("cpu")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for an allocator failure (CUDA or CPU) anywhere in the exception's cause / context chain."""
    return is_allocator_failure(exc)


def analyse(
    model: nn.Module,
    calibration: Calibration | None,
    candidates: Sequence[Quantizer],
    metric: Metric,
    *,
    seed: int = 0,
    report: Report | None = None,
    timings: dict[str, float] | None = None,
    device: str | None = "auto",
    hardware: HardwareProfile | None = None,
    latency_table: Mapping[tuple[str, str], float] | None = None,
    grouping: str | list[str] = "layer",
    ties: str = "auto",
    provenance: dict[str, Any] | None = None,
    plan_memory: bool = True,
    cost_sample: torch.Tensor | None = None,
    no_cost_sample: str | None = None,
    measure: Callable[[MetricContext], list[Any]] | None = None,
) -> SensitivityTable:
    """The sensitivity table of `model`'s quantizable layers under `candidates`.

    Leaves the model's parameter values unchanged (it may move the model to `device`). `timings`,
    when given, receives seconds per phase. `latency_table` maps (layer, candidate) → ms (parsed
    by workers.costs.parse_latency_table); `hardware` asks for roofline latencies instead.
    Without calibration, MACs (bops, roofline latency) come from one forward on `cost_sample`
    (workers.costs.synthetic_sample); when there is none, `no_cost_sample` says why, and the table
    carries a cost_unavailable warning instead of silently missing costs.
    `plan_memory` sizes the batches from the free memory (module docstring): `calibration.batch_size`
    and the metric's probe batch are then upper bounds, and both objects are changed in place.
    `measure` stands in for `metric.measure` (a sharded analysis's merge: workers.sharding).
    """
    raw_report = report or (lambda fraction, message: None)
    shown = [0.0]

    def report(fraction: float, message: str) -> None:  # monotone even across OOM restarts
        shown[0] = max(shown[0], fraction)
        raw_report(shown[0], message)

    timings = timings if timings is not None else {}
    layers = find_layers(model)
    if not layers:
        raise AnalysisError("model: no quantizable layer found (Linear, Conv1d, Conv2d or Embedding)")
    if metric.needs_data and calibration is None:
        raise DatasetError(f"dataset: the {metric.name} metric needs calibration data")
    if not candidates:
        raise ValueError("candidates: must name at least one format")
    if hardware is not None and latency_table is not None:
        raise ValueError("options.latency_table: give either a latency table or a hardware profile, not both")
    names = [info.name for info, _ in layers]
    units = group_layers(names, grouping)
    if store_of(model) is not None and metric.name != "input_covariance":
        raise AnalysisError(f"metric {metric.name!r} needs every weight resident; with streamed weights only"
                            " input_covariance runs")

    target = resolve_device(device)
    place(model, target)
    static_batch = getattr(model, "bitplan_static_batch", None)
    static_note = None
    if calibration is not None:
        calibration.to(target)
        if static_batch is not None:
            static_note = _fit_static_batch(calibration, static_batch)
    torch.manual_seed(seed)

    started = time.perf_counter()
    trace = None
    if calibration is not None:
        report(0.0, "tracing one sample for MACs and shared inputs")
        try:
            with streamed_forward(model):
                trace = trace_layers(model, layers, calibration.inputs[: static_batch or 1])
            if static_batch is not None:
                _per_sample(trace, static_batch)
        except Exception as exc:  # noqa: BLE001 - user models fail in arbitrary ways
            if is_out_of_memory(exc):
                raise AnalysisError(_OOM_AT_ONE.format(device=target)) from exc
            raise AnalysisError(
                f"model forward failed on one calibration sample of shape {list(calibration.inputs[:1].shape)}:"
                f" {type(exc).__name__}: {exc}"
            ) from exc
    elif cost_sample is not None:
        report(0.0, "tracing one synthetic sample for MACs")
        try:
            with streamed_forward(model):
                trace = trace_layers(model, layers, cost_sample.to(target))
            if cost_sample.shape[0] > 1:
                _per_sample(trace, int(cost_sample.shape[0]))
        except Exception as exc:  # noqa: BLE001 - user models fail in arbitrary ways
            if is_out_of_memory(exc):
                raise AnalysisError(_OOM_AT_ONE.format(device=target)) from exc
            no_cost_sample = (f"the model's forward on a synthetic sample of shape {list(cost_sample.shape)} failed:"
                              f" {type(exc).__name__}: {exc}; give a dataset to trace on")
    else:
        no_cost_sample = no_cost_sample or "no calibration data and no synthetic sample to trace MACs on"
    timings["trace_s"] = time.perf_counter() - started

    started = time.perf_counter()
    first_batch = calibration.batch_size if calibration is not None else None
    knob = (pass_kind(metric) or (None, None))[1]
    first_probe = getattr(metric, knob) if knob else None
    memory: dict[str, Any] = {}
    cost = None
    if calibration is not None and plan_memory:
        cost = _plan_memory(model, layers, calibration, metric, target, static_batch, memory, report)
    timings["memory_plan_s"] = time.perf_counter() - started
    torch.manual_seed(seed)

    started = time.perf_counter()
    meter = PeakMeter(target)
    meter.reset()
    stats = _measure_with_backoff(
        model, layers, calibration, candidates, metric, seed, target, report,
        cost=cost, knob=knob, static_batch=static_batch, backoffs=memory.setdefault("backoffs", []), measure=measure,
    )
    memory["measure_peak_above_start_bytes"] = meter.peak()
    release_freed_memory()  # the metric's freed heap goes back before quantizing allocates anew
    if len(stats) != len(layers):
        raise AnalysisError(f"metric {metric.name!r} returned {len(stats)} statistics for {len(layers)} layers")
    timings["measure_s"] = time.perf_counter() - started

    started = time.perf_counter()
    report(_MEASURE_SHARE, f"quantizing {len(layers)} layers × {len(candidates)} candidates")
    rows = []
    fetch = layer_weights(model)  # the weight itself, or read from the files when streamed
    for (info, weight), stat in zip(layers, stats, strict=True):
        w = fetch(weight)
        layer_trace = trace.layers.get(info.name) if trace is not None else None
        cand_rows = []
        spreads: list[tuple[float, float] | None] = []
        for q in candidates:
            quantized = info.quantize(q, w)
            # the difference in float32, summed in float64: two float64 copies of SmolLM2's 28 M-weight
            # embedding made this loop the job's peak (+430 MiB above the metric's own)
            perturbation = float(torch.sub(quantized, w).pow_(2).sum(dtype=torch.float64))
            damage = float(metric.damage(stat, q, w, quantized))
            spreads.append(_damage_bounds(metric, stat, q, w, quantized, damage))
            if damage != damage or damage in (float("inf"), float("-inf")):
                raise AnalysisError(f"layer {info.name!r} candidate {q.name!r}: damage is not finite")
            latency = None
            if latency_table is not None:
                latency = latency_table[(info.name, q.name)]
            elif hardware is not None and layer_trace is not None:
                latency = roofline_ms(layer_trace, info, q, hardware)
            cand_rows.append(
                CandidateRow(
                    candidate=q.name,
                    damage=damage,
                    raw_damage=damage,
                    bytes=q.bytes(info.weight_shape),
                    bits_per_weight=q.bits_per_weight(info.weight_shape),
                    perturbation=perturbation,
                    bops=bops(layer_trace.macs, q) if layer_trace is not None else None,
                    latency_ms=latency,
                )
            )
        enforce_monotone(cand_rows, candidates)
        _set_damage_ci(cand_rows, spreads, candidates, stat)
        rows.append(
            LayerRow(
                name=info.name,
                kind=info.kind,
                weight_shape=list(info.weight_shape),
                weights=info.parameters,
                mean=stat.mean,
                ci_halfwidth=stat.ci_halfwidth,
                samples=stat.samples,
                converged=stat.converged,
                candidates=cand_rows,
                macs=layer_trace.macs if layer_trace is not None else None,
                shared_with=list(info.shared_with),
            )
        )
    timings["quantize_s"] = time.perf_counter() - started
    report(1.0, "done")

    # ties from a calibration pass only (as before); a synthetic pass serves costs
    tie_groups = ([list(g) for g in trace.shared_inputs]
                  if (trace is not None and calibration is not None and ties == "auto") else [])
    prov: dict[str, Any] = {
        "seed": seed,
        "device": str(target),
        "torch": torch.__version__,
        "grouping": grouping,
        "ties": ties,
    }
    if calibration is not None:
        prov["calibration"] = dict(calibration.provenance)
        prov["batch_size"] = {"requested": first_batch, "used": calibration.batch_size}
        if knob:
            prov[knob] = {"requested": first_probe, "used": getattr(metric, knob)}
        if static_note is not None:
            prov["static_batch"] = static_note
    memory.update(process_peak(target))
    prov["memory"] = memory
    if trace is not None:
        prov["cost_sample_shape"] = trace.sample_shape
        if calibration is None:
            prov["cost_sample"] = "synthetic"
    else:
        missing = ["bops"] + (["latency_ms"] if hardware is not None else [])
        prov["costs_unavailable"] = {"costs": missing, "reason": no_cost_sample or "no sample to trace MACs on"}
    if hardware is not None:
        prov["latency"] = {"model": "roofline", "hardware": hardware.to_dict()}
    elif latency_table is not None:
        prov["latency"] = {"model": "table"}
    run_info = getattr(metric, "run_info", None)
    if isinstance(run_info, dict) and run_info:
        prov["metric_run"] = dict(run_info)
    stopping = getattr(metric, "stopping", None)
    if isinstance(stopping, dict) and stopping:
        prov["stopping"] = dict(stopping)
    prov.update(provenance or {})
    table = SensitivityTable(
        metric=metric.name,
        statistic=metric.statistic,
        loss=_loss_name(metric, model, calibration),
        candidates=[q.name for q in candidates],
        layers=rows,
        calibration_samples=calibration.samples if calibration is not None else 0,
        groups={unit: members for unit, members in units.items() if members != [unit]},
        ties=tie_groups,
        provenance=prov,
    )
    table.warnings = table_warnings(table)
    return table


def _fit_static_batch(calibration: Calibration, size: int) -> dict[str, int]:
    """Keep whole batches of the model's fixed batch size; what is left out is counted."""
    total = calibration.samples
    keep = total // size * size
    if keep == 0:
        raise DatasetError(
            f"dataset: {total} samples, but the model was exported with a fixed batch of {size}; give at least"
            f" {size} samples, or re-export with a dynamic batch: torch.export.export(m, (x,),"
            " dynamic_shapes={'x': {0: torch.export.Dim('batch')}})"
        )
    calibration.inputs = calibration.inputs[:keep]
    if calibration.targets is not None:
        calibration.targets = calibration.targets[:keep]
    calibration.batch_size = size
    return {"batch": size, "samples_used": keep, "samples_left_out": total - keep}


def _per_sample(trace, batch: int) -> None:
    """A trace of one static batch, divided into one sample's counts."""
    for t in trace.layers.values():
        t.macs //= batch
        t.input_elements //= batch
        t.output_elements //= batch
    trace.sample_shape = [1, *trace.sample_shape[1:]]


def _plan_memory(model, layers, calibration, metric, device, static_batch, memory, report) -> PassCost | None:
    """Measure one pass at batch 1–2, choose the batch sizes that fit (workers.memory); records it all in
    `memory`. None when the metric has no pass to budget."""
    kind = pass_kind(metric)
    if kind is None:
        return None
    pass_type, knob = kind
    if store_of(model) is not None:
        pass_type = "forward"  # streamed: no graph may hold a block's weights; the backward is block by block
    report(0.0, "measuring the memory of one pass at small batch sizes")
    loss_option = {"loss": metric.loss} if isinstance(getattr(metric, "loss", None), str) else {}
    fixed = min(int(getattr(metric, "layer_chunk", 1)), len(layers)) if knob is None else None
    if knob and isinstance(getattr(metric, "max_probes", None), int):  # never more probes at once than run
        setattr(metric, knob, max(1, min(getattr(metric, knob), metric.max_probes)))
    free, _ = free_memory(device)
    try:
        with streamed_forward(model):
            cost = measure_pass_cost(
                model, [p for _, p in layers], calibration, kind=pass_type,
                output_loss=getattr(metric, "output_loss", "kl"), device=device, batch_cap=calibration.batch_size,
                probe_cap=getattr(metric, knob) if knob else max(2, fixed or 1), static_batch=static_batch,
                **loss_option,  # no doubling: four passes at b, p ∈ {1, 2} (issue 10: growth cost minutes)
            )
    except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled here, the rest re-raised
        if not is_out_of_memory(exc):
            raise
        del exc
        gc.collect()
        memory["plan"] = {"out_of_memory_in_probe": True}
        calibration.batch_size = static_batch or 1
        if knob:
            setattr(metric, knob, 1)
        return None
    free, bounds = free_memory(device)
    plan = choose_batches(
        cost, free, samples=calibration.samples, batch_cap=calibration.batch_size,
        probe_cap=getattr(metric, knob) if knob else None, static_batch=static_batch, fixed_probes=fixed,
    )
    calibration.batch_size = plan.batch_size
    if knob and plan.probe_batch:
        setattr(metric, knob, plan.probe_batch)
    gib = 2**30
    report(0.0, f"memory: batch size {plan.batch_size}" + (f", {knob} {plan.probe_batch}" if knob else "")
           + f" planned (≈ {plan.estimated_bytes / gib:.2f} GiB of "
           + ("unknown" if free is None else f"{free / gib:.2f} GiB free") + ")")
    memory.update(pass_kind=pass_type, free_bytes=free, free_bounds=bounds, safety=SAFETY, cost=cost.to_dict(),
                  plan=plan.to_dict())
    return cost


def _halve_probes_first(cost: PassCost | None, batch: int, probes: int) -> bool:
    """Out of memory: halve the probe batch rather than the batch when the estimate says probes hold
    most of it (large models: p copies of every weight), and by a clear margin over measurement noise."""
    if cost is None:
        return False
    probe_term = cost.per_probe * probes + cost.per_sample_probe * batch * probes
    return probe_term > 2 * cost.per_sample * batch and probe_term > 64 * 2**20


def _measure_with_backoff(model, layers, calibration, candidates, metric, seed, device, report, *,
                          cost=None, knob=None, static_batch=None, backoffs=None, measure=None):
    backoffs = backoffs if backoffs is not None else []
    while True:
        ctx = MetricContext(
            model=model,
            layers=layers,
            calibration=calibration,
            candidates=list(candidates),
            seed=seed,
            report=lambda f, m: report(_MEASURE_SHARE * min(max(f, 0.0), 1.0), m),
        )
        try:
            return (measure or metric.measure)(ctx)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
            if calibration is None or not is_out_of_memory(exc):
                raise
            failed = calibration.batch_size
            probes = getattr(metric, knob) if knob else 1
            can_halve_batch = failed > 1 and static_batch is None
            if probes > 1 and (not can_halve_batch or _halve_probes_first(cost, failed, probes)):
                setattr(metric, knob, probes // 2)
                message = (f"out of memory at batch size {failed}, {knob} {probes} on {device};"
                           f" retrying with {knob} {probes // 2}")
            elif can_halve_batch:
                calibration.batch_size = max(1, failed // 2)
                message = f"out of memory at batch size {failed} on {device}; retrying with {calibration.batch_size}"
            elif static_batch is not None:
                raise AnalysisError(
                    f"out of memory on {device} at the model's fixed batch of {static_batch}: re-export it with a"
                    " dynamic batch (torch.export.export(m, (x,), dynamic_shapes={'x': {0: torch.export.Dim("
                    "'batch')}})) so smaller batches can run, or use a device with more memory"
                ) from exc
            else:
                raise AnalysisError(_OOM_AT_ONE.format(device=device)) from exc
            del exc  # its traceback holds the failed attempt's tensors
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            backoffs.append(message)
            report(0.0, message)


def _damage_bounds(metric, stat, q, w, quantized, damage) -> tuple[float, float] | None:
    """The metric's damage at the ends of the statistic's 95% interval (None when it is exact)."""
    half = stat.ci_halfwidth
    if half is None or not math.isfinite(half):
        return None
    hi = float(metric.damage(dataclasses.replace(stat, mean=stat.mean + half), q, w, quantized))
    lo = float(metric.damage(dataclasses.replace(stat, mean=stat.mean - half), q, w, quantized))
    if hi == lo and half > 0 and stat.mean != 0:  # a damage that does not read the mean (fisher)
        return damage * (1 + half / abs(stat.mean)), damage * max(1 - half / abs(stat.mean), 0.0)
    return hi, lo


def _set_damage_ci(rows: list[CandidateRow], bounds, candidates: Sequence[Quantizer], stat) -> None:
    """`damage_ci` = half the spread between the interval's ends, each end made monotone along the
    ladders as the damage is, so redraws keep more bits never worse (solver.confidence)."""
    if any(b is None for b in bounds):
        return
    ends = []
    for k in (0, 1):
        tmp = [dataclasses.replace(r, raw_damage=b[k]) for r, b in zip(rows, bounds)]
        enforce_monotone(tmp, candidates)
        ends.append([t.damage for t in tmp])
    for row, hi, lo in zip(rows, *ends):
        row.damage_ci = max(hi - lo, 0.0) / 2


def enforce_monotone(rows: list[CandidateRow], candidates: Sequence[Quantizer]) -> None:
    """Running minimum of damage in ascending weight bits along each ladder (see module docstring)."""
    ladders: dict[str, list[int]] = defaultdict(list)
    for i, q in enumerate(candidates):
        ladders[q.ladder].append(i)
    for members in ladders.values():
        best = float("inf")
        for i in sorted(members, key=lambda j: candidates[j].weight_bits):
            best = min(best, rows[i].raw_damage)
            rows[i].damage = best


def _loss_name(metric: Metric, model: nn.Module, calibration: Calibration | None) -> str:
    if not metric.needs_data or calibration is None:
        return "none"
    label_free = uses_label_free(model, calibration, getattr(metric, "loss", "auto"))
    return loss_name(label_free, getattr(metric, "output_loss", "kl"))
