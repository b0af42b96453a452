"""Top Hessian eigenvalue per layer by power iteration on each layer's Hessian block (HAWQ-v1).

Each layer l runs its own power iteration on H_ll: v ← H_ll v / ‖H_ll v‖, λ = vᵀH_ll v (Rayleigh
quotient, v unit). H_ll v needs a probe that is zero outside layer l; the layers' probes are the
columns of one batched double backward (`is_grads_batched`), so one iteration of every layer costs
about one batched Hessian-vector product. A layer stops when |λ_k − λ_{k−1}| ≤ tolerance·|λ_{k−1}|
(absolute value: with cross-entropy away from a minimum λ can be negative), or at `max_iterations`.

Power iteration finds the eigenvalue of largest magnitude; in label-free mode the Hessian is
positive semi-definite, so that is λ_max. It starts from a seeded Rademacher vector.

Damage: Ω_l(b) = max(λ_max, 0) · ‖Q_b(W_l) − W_l‖². Since ΔWᵀH_llΔW ≤ λ_max‖ΔW‖², this is an
upper bound of the second-order term on the same scale as hutchinson's Tr(H)/n · ‖ΔW‖² (which
replaces λ_max by the average eigenvalue); HAWQ-v1 ranks layers by λ_max alone and sets bits by
hand. A negative dominant eigenvalue predicts no second-order harm (clamped to 0, reported raw).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from workers.errors import AnalysisError
from workers.metrics._base import LayerStatistic, Metric, MetricContext
from workers.metrics._common import (
    BatchedHvp,
    calibrated_params,
    check_loss,
    check_output_loss,
    check_positive_ints,
    check_tolerance,
    grad_only_for,
    perturbation,
    rademacher,
    relative,
)
from workers.metrics._loss import CalibrationLoss

if TYPE_CHECKING:
    from workers.quantizers import Quantizer


@dataclass
class Eigen(Metric):
    """Options: `tolerance` relative change of λ between iterations that ends a layer's iteration;
    `max_iterations` per layer; `layer_chunk` layers whose iterations share one batched backward
    (memory grows with chunk × their weights); `output_loss` for label-free mode; `loss` which loss
    ("auto", "label_free", "cross_entropy"; see workers.metrics._loss)."""

    tolerance: float = 1e-3
    max_iterations: int = 100
    layer_chunk: int = 16
    output_loss: str = "kl"
    loss: str = "auto"

    name: ClassVar[str] = "eigen"
    statistic: ClassVar[str] = "hessian_top_eigenvalue"
    needs_data: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_tolerance(self.tolerance)
        check_positive_ints(self, "max_iterations", "layer_chunk")
        check_output_loss(self.output_loss)
        check_loss(self.loss)

    def measure(self, ctx: MetricContext) -> list[LayerStatistic]:
        params = calibrated_params(self.name, ctx)
        gen = torch.Generator().manual_seed(int(ctx.seed))
        vectors = [rademacher(tuple(p.shape), p.detach(), gen) for p in params]
        vectors = [v / v.norm() if v.numel() else v for v in vectors]
        eigen = [math.nan] * len(params)
        iterations = [0] * len(params)
        done = [False] * len(params)
        started = time.perf_counter()
        with grad_only_for(ctx.model, params):
            loss = CalibrationLoss(ctx.model, ctx.calibration, output_loss=self.output_loss, loss=self.loss)
            hvp = BatchedHvp(loss, params, self.name)
            for step in range(1, self.max_iterations + 1):
                live = [i for i in range(len(params)) if not done[i]]
                if not live:
                    break
                for start in range(0, len(live), self.layer_chunk):
                    chunk = live[start : start + self.layer_chunk]
                    products = hvp(_block_diagonal(vectors, chunk), chunk)
                    for j, i in enumerate(chunk):
                        hv = products[j][j]
                        value = float((vectors[i].to(torch.float64) * hv.to(torch.float64)).sum())
                        if not math.isfinite(value):
                            raise AnalysisError("eigen: the Hessian-vector product is not finite")
                        previous, eigen[i] = eigen[i], value
                        iterations[i] = step
                        norm = hv.norm()
                        if norm == 0:  # H_ll v = 0: v is in the null space; λ = 0 is exact enough
                            done[i] = True
                            continue
                        vectors[i] = hv / norm
                        if step > 1 and relative(previous, abs(value - previous)) <= self.tolerance:
                            done[i] = True
                finished = sum(done)
                elapsed = time.perf_counter() - started
                eta = elapsed / step * (self.max_iterations - step) if finished < len(params) else 0.0
                ctx.report(
                    max(step / self.max_iterations, finished / len(params)),
                    f"eigen: iteration {step}, {finished} of {len(params)} layers converged,"
                    f" ETA ≤ {eta:.0f} s",
                )
        ctx.report(1.0, f"eigen: {sum(done)} of {len(params)} layers converged")
        return [
            LayerStatistic(mean=eigen[i], ci_halfwidth=None, samples=iterations[i], converged=done[i])
            for i in range(len(params))
        ]

    def damage(
        self, stat: LayerStatistic, candidate: Quantizer, weight: torch.Tensor, quantized: torch.Tensor
    ) -> float:
        return max(stat.mean, 0.0) * float(perturbation(weight, quantized).pow(2).sum())


def _block_diagonal(vectors: list[torch.Tensor], chunk: list[int]) -> list[torch.Tensor | None]:
    """Column j carries layer chunk[j]'s vector and zeros elsewhere, so the batched product's
    column j restricted to that layer is H_ll v_l."""
    blocks: list[torch.Tensor | None] = [None] * len(vectors)
    for j, i in enumerate(chunk):
        block = torch.zeros((len(chunk), *vectors[i].shape), dtype=vectors[i].dtype, device=vectors[i].device)
        block[j] = vectors[i]
        blocks[i] = block
    return blocks
