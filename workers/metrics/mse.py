"""Data-free sensitivity: the weight perturbation ‖Q(W) − W‖², normalised for scale.

Needs no calibration data, so it is the metric for models uploaded without any. Raw ‖ΔW‖² is not
comparable across layers whose weights differ in magnitude, hence `normalize`:
- "tensor" (default): ‖ΔW_l‖² / ‖W_l‖², the layer's noise-to-signal ratio. Invariant to rescaling
  one layer (and to moving scale between a layer and the next through a ReLU, which leaves the
  function unchanged), right for a layer followed by a normalisation; a layer scaled up alone
  does *not* score as more sensitive under it. Measured on the digits MLP / CNN it ranks
  layer × candidate closer to measured loss_delta than "model" (Spearman ≈ 0.92–0.93 vs
  0.82–0.85 label-free; bench/sensitivity.py prints the current figures).
- "model": ‖ΔW_l‖² / w̄², where w̄² is the mean squared weight over all quantizable
  layers of the model: the damage in units of "one typical weight's energy". Comparable across
  models, invariant to rescaling the whole model; a layer whose weights are larger than the rest
  (so its rounding errors are larger) scores as more sensitive.
- "channel": the mean over output channels (first weight dimension) of ‖ΔW_c‖² / ‖W_c‖², which
  lets a channel with small weights count as much as one with large.
bench/sensitivity.py prints how each choice ranks layer × candidate against measured loss_delta.

Statistic: the layer's mean squared weight ‖W_l‖² / n_l (exact: no CI, no samples).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from workers.errors import AnalysisError
from workers.metrics._base import LayerStatistic, Metric, MetricContext
from workers.metrics._common import perturbation

if TYPE_CHECKING:
    from workers.quantizers import Quantizer

NORMALIZATIONS = ("tensor", "model", "channel")


@dataclass
class Mse(Metric):
    """Options: `normalize` ("tensor", "model" or "channel"; see the module docstring)."""

    normalize: str = "tensor"

    name: ClassVar[str] = "mse"
    statistic: ClassVar[str] = "weight_mean_square"
    needs_data: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(
                f"options.normalize: must be one of {', '.join(NORMALIZATIONS)}, got {self.normalize!r}"
            )

    def measure(self, ctx: MetricContext) -> list[LayerStatistic]:
        if not ctx.layers:
            raise AnalysisError("model: no quantizable layer found")
        with torch.no_grad():
            energies = [float(w.detach().to(torch.float64).pow(2).sum()) for _, w in ctx.layers]
        count = sum(w.numel() for _, w in ctx.layers)
        scale = math.fsum(energies) / count if count else 0.0
        ctx.report(1.0, f"mse: {len(ctx.layers)} layers, no data needed")
        return [
            LayerStatistic(
                mean=e / w.numel() if w.numel() else 0.0, extra={"model_mean_square": scale, "energy": e}
            )
            for e, (_, w) in zip(energies, ctx.layers, strict=True)
        ]

    def damage(
        self, stat: LayerStatistic, candidate: Quantizer, weight: torch.Tensor, quantized: torch.Tensor
    ) -> float:
        delta = perturbation(weight, quantized)
        if self.normalize == "model":
            return _ratio(float(delta.pow(2).sum()), stat.extra["model_mean_square"])
        if self.normalize == "tensor":
            return _ratio(float(delta.pow(2).sum()), stat.extra["energy"])
        if delta.dim() == 0 or delta.numel() == 0:
            return 0.0
        rows = delta.reshape(delta.shape[0], -1).pow(2).sum(dim=1)
        norms = weight.detach().to(torch.float64).reshape(delta.shape[0], -1).pow(2).sum(dim=1)
        return float(torch.where(norms > 0, rows / norms.clamp_min(1e-300), 0.0).mean())


def _ratio(numerator: float, denominator: float) -> float:
    """An all-zero reference weight loses nothing to rounding (a zero is exact in every format)."""
    return numerator / denominator if denominator > 0 else 0.0
