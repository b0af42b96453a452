"""Spot checks: measure what the quadratic damage predicts for the largest roundings, and correct it.

The second-order damages (sampled_gauss_newton, gauss_newton) are exact for small perturbations and
can fall short for large ones: int2 can saturate a softmax or flip activations, so the loss rises
faster than the quadratic form, and an estimator can be biased (labels drawn plainly from a confident
softmax put sampled_gauss_newton ~500× low on a digits MLP). What such an error changes is mostly one
factor per candidate, since the ranking within a candidate holds; an allocation that buys int2 too
cheaply loses to uniform. Measured on SmolLM2-135M and EfficientNet-Lite0 with today's estimator, the
layers came out at or below their predictions (README), so there this guard applies no factor.

So for each low-bit candidate (at most `MAX_WEIGHT_BITS` weight bits) a few layers, drawn with the
analysis's seed, are quantized one at a time and the label-free loss is measured on the first
calibration samples (about `ROWS` output rows: LM tokens or classifier outputs; at most `MAX_SAMPLES`). Each candidate's
damage, in every layer, is multiplied by the median of measured / predicted over its checked layers
when that median is above 1; a prediction that was too high is left alone (a measurement on a
subset is noisy, and over-prediction only costs bits). The monotone repair then runs again, and the
provenance records every ratio and the factor applied. Cost: layers × candidates forwards of the
subset, no backward.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch

from workers.data import Calibration
from workers.metrics._common import grad_only_for
from workers.metrics._loss import CalibrationLoss
from workers.metrics.loss_delta import quantized_losses
from workers.models import find_layers
from workers.quantizers import Quantizer
from workers.streaming import store_of
from workers.table import SensitivityTable

__all__ = ["CHECKED_METRICS", "MAX_WEIGHT_BITS", "ROWS", "spot_check"]

# metrics whose damage is the second-order prediction of the label-free loss a single layer's rounding causes
CHECKED_METRICS = ("sampled_gauss_newton", "gauss_newton")
MAX_WEIGHT_BITS = 4
ROWS = 512
MAX_SAMPLES = 16  # an ImageNet CNN: 8 layers × 3 candidates × 64 crops took 165 s, 2.3× the metric
MIN_RATIOS = 3  # fewer usable ratios than this: no factor

Report = Callable[[float, str], None]


def spot_check(model: torch.nn.Module, calibration: Calibration, table: SensitivityTable,
               candidates: Sequence[Quantizer], *, layers: int, seed: int = 0, output_loss: str = "kl",
               report: Report | None = None) -> dict[str, Any]:
    """Measure, correct `table` in place (module docstring) and return what was done, as JSON."""
    from workers.analysis import enforce_monotone

    report = report or (lambda fraction, message: None)
    checked = [q for q in candidates if q.weight_bits <= MAX_WEIGHT_BITS]
    if table.metric not in CHECKED_METRICS:
        return {"skipped": f"the {table.metric} damage is not a second-order prediction of the loss"}
    if store_of(model) is not None:
        return {"skipped": "streamed weights: a whole-model forward per check would read every block again"}
    if not checked or layers <= 0:
        return {"skipped": "no candidate with at most 4 weight bits" if layers > 0 else "options.spot_checks is 0"}
    forward_batch = ((table.provenance or {}).get("metric_run") or {}).get("forward_batch")
    subset = _subset(calibration, getattr(model, "bitplan_static_batch", None), forward_batch)
    found = {info.name: (info, weight) for info, weight in find_layers(model)}
    rows = {row.name: row for row in table.layers}
    names = [n for n in rows if n in found]
    drawn = sorted(random.Random(seed).sample(names, min(layers, len(names))), key=names.index)
    ratios: dict[str, dict[str, float]] = {q.name: {} for q in checked}
    total, done = len(drawn) * len(checked), 0
    with torch.no_grad(), grad_only_for(model, []):
        loss = CalibrationLoss(model, subset, output_loss=output_loss, loss="label_free")
        for name in drawn:
            info, weight = found[name]

            def each(q: Quantizer) -> None:
                nonlocal done
                done += 1
                report(done / total, f"spot checks: {done} of {total} ({name} × {q.name})")

            cells = {c.candidate: c for c in rows[name].candidates}
            for candidate, measured in quantized_losses(loss, info, weight, checked, each).items():
                predicted = cells[candidate].raw_damage
                if math.isfinite(measured) and measured > 0 and predicted > 0:
                    ratios[candidate][name] = measured / predicted
    factors = {}
    for q in checked:
        values = list(ratios[q.name].values())
        factors[q.name] = max(1.0, statistics.median(values)) if len(values) >= MIN_RATIOS else 1.0
    if any(f > 1.0 for f in factors.values()):
        for row in table.layers:
            for cell in row.candidates:
                factor = factors.get(cell.candidate, 1.0)
                cell.raw_damage *= factor
                if cell.damage_ci is not None:
                    cell.damage_ci *= factor
            enforce_monotone(row.candidates, candidates)
    return {
        "layers": drawn,
        "samples": subset.samples,
        "candidates": {q.name: {"factor": factors[q.name], "ratios": ratios[q.name]} for q in checked},
        "rule": "damage × max(1, median of measured / predicted single-layer loss change) per candidate",
    }


def _subset(calibration: Calibration, static_batch: int | None, forward_batch: int | None = None) -> Calibration:
    """The first samples giving about ROWS output rows (a text window gives one row per token), in
    whole batches of a model exported with a fixed batch size, else forwarded at the batch the
    metric itself forwarded (`forward_batch`): 16 ImageNet crops at once took 380 MiB above the
    metric's own peak on EfficientNet-Lite0."""
    per_sample = int(calibration.inputs.shape[1]) if calibration.token_ids and calibration.inputs.dim() > 1 else 1
    count = max(1, min(calibration.samples, MAX_SAMPLES, math.ceil(ROWS / per_sample)))
    batch = min(calibration.batch_size, count, forward_batch or count)
    if static_batch:
        count = min(max(static_batch, count - count % static_batch), calibration.samples)
        batch = static_batch
    return Calibration(calibration.inputs[:count], None, batch, token_ids=calibration.token_ids)
