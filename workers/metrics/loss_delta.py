"""Measured sensitivity: quantize one layer to one candidate, measure the calibration loss change.

The ground truth the proxies approximate (AIMET AMP phase 1): for every layer l and candidate b,
Δ_l(b) = L(θ with W_l ← Q_b(W_l)) − L(θ), every other layer left in float, the weight restored
after each evaluation. Cost: layers × candidates forward passes over the calibration set (no
backward), so it is the slowest metric; progress reports an ETA per evaluation.

The loss is the calibration-set mean (cross-entropy with targets, label-free output matching
without, so Δ = L(θ_q) since L(θ₀) = 0). Forward passes on fixed data in eval mode are
deterministic; the seed is not used. Δ can be negative (quantization noise that happens to lower
cross-entropy): it is reported as measured, since it is a measurement, not a proxy. Per-layer
terms ignore how layers interact when several are quantized together.

Statistic: the largest Δ over the candidates (the layer's worst case); damage is the Δ measured
for that candidate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from workers.errors import AnalysisError
from workers.metrics._base import LayerStatistic, Metric, MetricContext
from workers.metrics._common import calibrated_params, check_output_loss, grad_only_for
from workers.metrics._loss import CalibrationLoss

if TYPE_CHECKING:
    from workers.models import LayerInfo
    from workers.quantizers import Quantizer


@dataclass
class LossDelta(Metric):
    """Options: `output_loss` for label-free mode ("kl" or "mse")."""

    output_loss: str = "kl"

    name: ClassVar[str] = "loss_delta"
    statistic: ClassVar[str] = "max_loss_delta"
    needs_data: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_output_loss(self.output_loss)

    def measure(self, ctx: MetricContext) -> list[LayerStatistic]:
        calibrated_params(self.name, ctx)
        total = len(ctx.layers) * len(ctx.candidates)
        stats = []
        done = 0
        started = time.perf_counter()
        with torch.no_grad(), grad_only_for(ctx.model, []):
            loss = CalibrationLoss(ctx.model, ctx.calibration, output_loss=self.output_loss)
            base = _total(loss)
            for info, weight in ctx.layers:

                def each(q: Quantizer) -> None:
                    nonlocal done
                    done += 1
                    elapsed = time.perf_counter() - started
                    ctx.report(done / total, f"loss_delta: {done} of {total} evaluations ({info.name} × {q.name}),"
                                             f" ETA {elapsed / done * (total - done):.0f} s")

                deltas = {name: _finite(value) - base
                          for name, value in quantized_losses(loss, info, weight, ctx.candidates, each).items()}
                stats.append(
                    LayerStatistic(
                        mean=max(deltas.values(), default=0.0),
                        ci_halfwidth=None,
                        samples=None,
                        extra={"delta": deltas},
                    )
                )
        return stats

    def damage(
        self, stat: LayerStatistic, candidate: Quantizer, weight: torch.Tensor, quantized: torch.Tensor
    ) -> float:
        try:
            return stat.extra["delta"][candidate.name]
        except KeyError:
            raise AnalysisError(f"loss_delta: candidate {candidate.name!r} was not measured") from None


def quantized_losses(loss: CalibrationLoss, info: LayerInfo, weight: torch.Tensor, candidates: Sequence[Quantizer],
                     each: Callable[[Quantizer], None] = lambda q: None) -> dict[str, float]:
    """The calibration loss with only `weight` rounded to each candidate (no grad), the weight put back
    after each and whatever happens; `each` is called after every evaluation."""
    original = weight.detach().clone()
    out: dict[str, float] = {}
    try:
        for q in candidates:
            # info.quantize rounds in output-channel orientation (HF Conv1D stores weights transposed)
            weight.copy_(info.quantize(q, original).to(weight.dtype))
            out[q.name] = math.fsum(float(v) for v in loss.batch_losses())  # may be inf / nan: the caller decides
            weight.copy_(original)
            each(q)
    finally:
        weight.copy_(original)
    return out


def _total(loss: CalibrationLoss) -> float:
    return _finite(math.fsum(float(v) for v in loss.batch_losses()))


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise AnalysisError("loss_delta: the loss is not finite on the calibration data")
    return value
