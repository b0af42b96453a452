"""Per-layer Hessian trace by Hutchinson's method (HAWQ-v2/v3 sensitivity).

For a Rademacher vector v (entries ±1), E[vᵀHv] = Tr(H). One Hessian-vector product of the whole
loss gives every layer's sample at once: v_lᵀ(Hv)_l estimates Tr(H_ll). Several probes share one
gradient graph (batched double backward, `is_grads_batched`). bench/sensitivity.py measures it
against torch.func vmap over jvp(grad): 1.4–2.4 fwd+bwd per probe against 1.5–2.0, vmap up to
~20% faster on the CNN and a 430k-weight MLP, slower on the small MLP. Both meet the ≤ 3 target;
this path stays because it differentiates the same CalibrationLoss graph as everything else
(several calibration batches, any device, a per-column loop for ops without a batching rule),
where vmap would need a second, functional copy of the loss.
Probing stops when every layer's relative 95% confidence half-width 1.96·s/√k / |mean| is at most
`tolerance` (after at least `min_probes`), or at `max_probes`.

Variance reduction (`shrink`): v_lᵀ(Hv)_l = v_lᵀH_ll v_l + Σ_{m≠l} v_lᵀH_lm v_m; the cross terms add
variance but nothing to the mean. Once a layer has converged it is dropped from the probe vector,
so the layers still being probed stop paying for the cross terms of the finished ones. Every
sample stays an unbiased estimate of the same Tr(H_ll), so pooling them keeps the mean unbiased
and s²/k an honest variance of it. Measured on the digits CNN (bench/sensitivity.py) this cuts the
probes of the noisy 144-weight conv1 roughly in half; the cost per probe is unchanged.

Damage (HAWQ-v3): Ω_l(b) = max(Tr(H_l), 0) / n_l · ‖Q_b(W_l) − W_l‖². A negative trace estimate
(possible with cross-entropy away from a minimum; never in label-free mode, whose Hessian is PSD)
predicts no second-order harm, so it is clamped to 0; the raw mean is still reported.
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
    check_output_loss,
    check_positive_ints,
    check_tolerance,
    grad_only_for,
    mean_ci,
    pct,
    perturbation,
    rademacher,
    relative,
)
from workers.metrics._loss import CalibrationLoss

if TYPE_CHECKING:
    from torch import nn

    from workers.quantizers import Quantizer


@dataclass
class Hutchinson(Metric):
    """Options: `tolerance` relative CI half-width to reach on every layer; `min_probes` per layer
    before the stopping rule may fire (the sample deviation needs a few); `max_probes` per layer,
    hard cap; `probe_batch` probes sharing one gradient graph; `shrink` drops converged layers from
    the probe vector (see module docstring); `output_loss` for label-free mode ("kl" or "mse")."""

    tolerance: float = 0.1
    min_probes: int = 16
    max_probes: int = 1024
    probe_batch: int = 16
    shrink: bool = True
    output_loss: str = "kl"

    name: ClassVar[str] = "hutchinson"
    statistic: ClassVar[str] = "hessian_trace"
    needs_data: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_tolerance(self.tolerance)
        check_positive_ints(self, "min_probes", "max_probes", "probe_batch")
        if self.min_probes < 2:
            raise ValueError("options.min_probes: at least 2 probes are needed for a confidence interval")
        if self.max_probes < self.min_probes:
            raise ValueError(
                f"options.max_probes: must be ≥ min_probes ({self.min_probes}), got {self.max_probes}"
            )
        if not isinstance(self.shrink, bool):
            raise ValueError(f"options.shrink: must be true or false, got {self.shrink!r}")
        check_output_loss(self.output_loss)

    def measure(self, ctx: MetricContext) -> list[LayerStatistic]:
        params = calibrated_params(self.name, ctx)
        with grad_only_for(ctx.model, params):
            loss = CalibrationLoss(ctx.model, ctx.calibration, output_loss=self.output_loss)
            samples = self._probe(loss, params, ctx)
        stats = []
        for row in samples:
            mean, half = mean_ci(row)
            if not (math.isfinite(mean) and math.isfinite(half)):
                raise AnalysisError("hutchinson: the trace estimate is not finite (NaN/inf in the loss)")
            stats.append(
                LayerStatistic(
                    mean=mean,
                    ci_halfwidth=half,
                    samples=len(row),
                    converged=relative(mean, half) <= self.tolerance,
                )
            )
        return stats

    def damage(
        self, stat: LayerStatistic, candidate: Quantizer, weight: torch.Tensor, quantized: torch.Tensor
    ) -> float:
        n = weight.numel()
        return max(stat.mean, 0.0) / n * float(perturbation(weight, quantized).pow(2).sum()) if n else 0.0

    def _probe(
        self, loss: CalibrationLoss, params: list[nn.Parameter], ctx: MetricContext
    ) -> list[list[float]]:
        gen = torch.Generator().manual_seed(int(ctx.seed))
        samples: list[list[float]] = [[] for _ in params]
        hvp = BatchedHvp(loss, params, self.name)
        live = list(range(len(params)))
        started = time.perf_counter()
        columns = 0
        shown = 0.0  # progress never moves backwards, even when the worst CI widens again
        while True:
            k = min(len(samples[i]) for i in live)
            count = min(self.probe_batch, self.max_probes - k)
            # Every layer draws its probe, live or not, so a layer's probes do not depend on when
            # the others converged: the same seed gives the same vectors whatever `shrink` is.
            probes = [rademacher((count, *p.shape), p, gen) for p in params]
            probed = set(live)
            products = hvp([v if i in probed else None for i, v in enumerate(probes)], live)
            for i, hv in zip(live, products, strict=True):
                per_probe = (probes[i].to(torch.float64) * hv.to(torch.float64)).flatten(1).sum(dim=1)
                samples[i].extend(per_probe.tolist())
            columns += count
            worst_all = max(relative(*mean_ci(row)) for row in samples)
            unfinished = [
                i
                for i in live
                if len(samples[i]) < self.max_probes
                and (len(samples[i]) < self.min_probes or relative(*mean_ci(samples[i])) > self.tolerance)
            ]
            if not unfinished:
                k = max(len(row) for row in samples)
                ctx.report(1.0, f"hutchinson: {k} probes, worst relative CI {pct(worst_all)}")
                return samples
            if self.shrink:
                live = unfinished
            needed = max(
                len(samples[i]) * (relative(*mean_ci(samples[i])) / self.tolerance) ** 2 for i in unfinished
            )
            needed = needed if math.isfinite(needed) else self.max_probes
            k = max(len(samples[i]) for i in unfinished)
            target = min(self.max_probes, max(self.min_probes, math.ceil(needed), k + 1))
            elapsed = time.perf_counter() - started
            eta = elapsed / columns * (target - k)
            shown = max(shown, k / target)
            ctx.report(
                shown,
                f"hutchinson: {k} probes, worst relative CI {pct(worst_all)} (target {self.tolerance:.0%}),"
                f" {len(unfinished)} of {len(params)} layers still probed, ETA {eta:.0f} s",
            )
