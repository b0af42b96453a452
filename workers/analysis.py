"""One sensitivity analysis: a metric's per-layer statistics turned into the damage × cost table.

Monotonicity: along a ladder (candidates of one family that differ only in weight bits, e.g.
int2 → int3 → int4 → int8 per channel) a candidate with more bits is never predicted worse than one
with fewer. Estimator noise (or a quantizer grid that happens to fit a layer badly) can invert two
raw damages; the table then gives the higher-bit candidate the lower damage of the two (a running
minimum in ascending bits), keeping the raw value beside it. Candidates on different ladders (per
channel vs group-wise, symmetric vs asymmetric) are not compared.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence

import torch
from torch import nn

from workers.data import Calibration
from workers.errors import AnalysisError, DatasetError
from workers.metrics import Metric, MetricContext
from workers.models import find_layers
from workers.quantizers import Quantizer
from workers.table import CandidateRow, LayerRow, SensitivityTable

__all__ = ["analyse", "enforce_monotone"]

Report = Callable[[float, str], None]
_MEASURE_SHARE = 0.95  # of the progress bar; quantizing every layer × candidate is the rest


def analyse(
    model: nn.Module,
    calibration: Calibration | None,
    candidates: Sequence[Quantizer],
    metric: Metric,
    *,
    seed: int = 0,
    report: Report | None = None,
    timings: dict[str, float] | None = None,
) -> SensitivityTable:
    """The sensitivity table of `model`'s quantizable layers under `candidates`.

    Leaves the model's parameters unchanged. `timings`, when given, receives seconds per phase.
    """
    report = report or (lambda fraction, message: None)
    timings = timings if timings is not None else {}
    layers = find_layers(model)
    if not layers:
        raise AnalysisError("model: no quantizable layer found (Linear, Conv1d, Conv2d or Embedding)")
    if metric.needs_data and calibration is None:
        raise DatasetError(f"dataset: the {metric.name} metric needs calibration data")
    if not candidates:
        raise ValueError("candidates: must name at least one format")

    torch.manual_seed(seed)
    started = time.perf_counter()
    ctx = MetricContext(
        model=model,
        layers=layers,
        calibration=calibration,
        candidates=list(candidates),
        seed=seed,
        report=lambda f, m: report(_MEASURE_SHARE * min(max(f, 0.0), 1.0), m),
    )
    stats = metric.measure(ctx)
    if len(stats) != len(layers):
        raise AnalysisError(f"metric {metric.name!r} returned {len(stats)} statistics for {len(layers)} layers")
    timings["measure_s"] = time.perf_counter() - started

    started = time.perf_counter()
    report(_MEASURE_SHARE, f"quantizing {len(layers)} layers × {len(candidates)} candidates")
    rows = []
    for (info, weight), stat in zip(layers, stats, strict=True):
        w = weight.detach().to(torch.float32)
        cand_rows = []
        for q in candidates:
            quantized = q.quantize(w)
            perturbation = float((quantized.to(torch.float64) - w.to(torch.float64)).pow(2).sum())
            damage = float(metric.damage(stat, q, w, quantized))
            if damage != damage or damage in (float("inf"), float("-inf")):
                raise AnalysisError(f"layer {info.name!r} candidate {q.name!r}: damage is not finite")
            cand_rows.append(
                CandidateRow(
                    candidate=q.name,
                    damage=damage,
                    raw_damage=damage,
                    bytes=q.bytes(info.weight_shape),
                    bits_per_weight=q.bits_per_weight(info.weight_shape),
                    perturbation=perturbation,
                )
            )
        enforce_monotone(cand_rows, candidates)
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
            )
        )
    timings["quantize_s"] = time.perf_counter() - started
    report(1.0, "done")
    return SensitivityTable(
        metric=metric.name,
        statistic=metric.statistic,
        loss=_loss_name(metric, calibration),
        candidates=[q.name for q in candidates],
        layers=rows,
        calibration_samples=calibration.samples if calibration is not None else 0,
    )


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


def _loss_name(metric: Metric, calibration: Calibration | None) -> str:
    if not metric.needs_data or calibration is None:
        return "none"
    if calibration.targets is not None:
        return "cross_entropy"
    return f"{getattr(metric, 'output_loss', 'kl')}_label_free"
