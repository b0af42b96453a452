"""Per-layer Hessian trace by Hutchinson's method (HAWQ-v2/v3 sensitivity).

For a Rademacher vector v (entries ±1), E[vᵀHv] = Tr(H). One Hessian-vector product of the whole
loss gives every layer's sample at once: v_lᵀ(Hv)_l estimates Tr(H_ll), the trace of layer l's
diagonal block. Several probes share one gradient graph (batched double backward). Probing stops
when every layer's relative 95% confidence half-width 1.96·s/√k / |mean| is at most `tolerance`
(after at least `min_probes`), or at `max_probes`.

Damage (HAWQ-v3): Ω_l(b) = max(Tr(H_l), 0) / n_l · ‖Q_b(W_l) − W_l‖². A negative trace estimate
(possible with cross-entropy away from a minimum; never in label-free mode, whose Hessian is PSD)
predicts no second-order harm, so it is clamped to 0; the raw mean is still reported.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from workers.errors import AnalysisError, DatasetError
from workers.metrics._base import LayerStatistic, Metric, MetricContext
from workers.metrics._loss import OUTPUT_LOSSES, CalibrationLoss

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from workers.quantizers import Quantizer

Z95 = 1.96


@dataclass
class Hutchinson(Metric):
    """Options: `tolerance` relative CI half-width to reach on every layer; `min_probes` before the
    stopping rule may fire (the sample deviation needs a few); `max_probes` hard cap; `probe_batch`
    probes sharing one gradient graph; `output_loss` for label-free mode ("kl" or "mse")."""

    tolerance: float = 0.1
    min_probes: int = 16
    max_probes: int = 1024
    probe_batch: int = 16
    output_loss: str = "kl"

    name: ClassVar[str] = "hutchinson"
    statistic: ClassVar[str] = "hessian_trace"
    needs_data: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if isinstance(self.tolerance, bool) or not isinstance(self.tolerance, int | float) or not (
            0 < self.tolerance < math.inf
        ):
            raise ValueError(f"options.tolerance: must be a positive number, got {self.tolerance!r}")
        for field_name in ("min_probes", "max_probes", "probe_batch"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"options.{field_name}: must be a positive integer, got {value!r}")
        if self.min_probes < 2:
            raise ValueError("options.min_probes: at least 2 probes are needed for a confidence interval")
        if self.max_probes < self.min_probes:
            raise ValueError(
                f"options.max_probes: must be ≥ min_probes ({self.min_probes}), got {self.max_probes}"
            )
        if self.output_loss not in OUTPUT_LOSSES:
            raise ValueError(f"options.output_loss: must be one of {', '.join(OUTPUT_LOSSES)}")

    def measure(self, ctx: MetricContext) -> list[LayerStatistic]:
        if ctx.calibration is None:
            raise DatasetError(f"dataset: the {self.name} metric needs calibration data")
        params = [p for _, p in ctx.layers]
        if not params:
            raise AnalysisError("model: no quantizable layer found")
        with _grad_only_for(ctx.model, params):
            loss = CalibrationLoss(ctx.model, ctx.calibration, output_loss=self.output_loss)
            samples = self._probe(loss, params, ctx)
        stats = []
        for row in samples:
            mean, half = _mean_ci(row)
            if not (math.isfinite(mean) and math.isfinite(half)):
                raise AnalysisError("hutchinson: the trace estimate is not finite (NaN/inf in the loss or Hessian)")
            stats.append(
                LayerStatistic(
                    mean=mean,
                    ci_halfwidth=half,
                    samples=len(row),
                    converged=_relative(mean, half) <= self.tolerance,
                )
            )
        return stats

    def damage(
        self, stat: LayerStatistic, candidate: Quantizer, weight: torch.Tensor, quantized: torch.Tensor
    ) -> float:
        n = weight.numel()
        perturbation = float((quantized.to(torch.float64) - weight.detach().to(torch.float64)).pow(2).sum())
        return max(stat.mean, 0.0) / n * perturbation if n else 0.0

    def _probe(self, loss: CalibrationLoss, params: list[nn.Parameter], ctx: MetricContext) -> list[list[float]]:
        gen = torch.Generator().manual_seed(int(ctx.seed))
        samples: list[list[float]] = [[] for _ in params]
        hvp = _BatchedHvp(loss, params)
        started = time.perf_counter()
        shown = 0.0  # progress never moves backwards, even when the worst CI widens again
        while True:
            k = len(samples[0])
            count = min(self.probe_batch, self.max_probes - k)
            probes = [_rademacher((count, *p.shape), p.dtype, gen) for p in params]
            products = hvp(probes)
            for layer, (v, hv) in enumerate(zip(probes, products, strict=True)):
                per_probe = (v.to(torch.float64) * hv.to(torch.float64)).flatten(1).sum(dim=1)
                samples[layer].extend(per_probe.tolist())
            k += count
            worst = max(_relative(*_mean_ci(row)) for row in samples)
            done = k >= self.max_probes or (k >= self.min_probes and worst <= self.tolerance)
            if done:
                ctx.report(1.0, f"hutchinson: {k} probes, worst relative CI {_pct(worst)}")
                return samples
            needed = k * (worst / self.tolerance) ** 2 if math.isfinite(worst) else self.max_probes
            target = min(self.max_probes, max(self.min_probes, math.ceil(needed), k + 1))
            elapsed = time.perf_counter() - started
            eta = elapsed / k * (target - k)
            shown = max(shown, k / target)
            ctx.report(
                shown,
                f"hutchinson: {k} probes, worst relative CI {_pct(worst)} (target {self.tolerance:.0%}),"
                f" ETA {eta:.0f} s",
            )


class _BatchedHvp:
    """H·v for a batch of probes, summed over calibration batches.

    With one calibration batch the gradient graph is built once and reused for every probe batch;
    with several it is rebuilt per batch so only one batch's graph is alive at a time. Batched
    double backward (is_grads_batched) falls back to a probe-by-probe loop for ops that vmap lacks.
    """

    def __init__(self, loss: CalibrationLoss, params: list[nn.Parameter]):
        self.loss = loss
        self.params = params
        self.batched = True
        self._cached: list[torch.Tensor | None] | None = None

    def __call__(self, probes: list[torch.Tensor]) -> list[torch.Tensor]:
        total = [torch.zeros_like(v) for v in probes]
        for grads in self._gradients():
            for acc, hv in zip(total, self._products(grads, probes), strict=True):
                acc.add_(hv)
        return total

    def _gradients(self) -> Iterator[list[torch.Tensor | None]]:
        if self._cached is not None:
            yield self._cached
            return
        single = len(self.loss.calibration) == 1
        for value in self.loss.batch_losses():
            if not torch.isfinite(value):
                raise AnalysisError("hutchinson: the loss is not finite on a calibration batch")
            grads = torch.autograd.grad(value, self.params, create_graph=True, allow_unused=True)
            grads = [g if g is not None and g.requires_grad else None for g in grads]
            if single:
                self._cached = grads
            yield grads

    def _products(self, grads: Sequence[torch.Tensor | None], probes: list[torch.Tensor]) -> list[torch.Tensor]:
        live = [i for i, g in enumerate(grads) if g is not None]
        if not live:  # the loss is (at most) linear in every layer weight: H = 0
            return [torch.zeros_like(v) for v in probes]
        outputs = [grads[i] for i in live]
        if self.batched:
            try:
                result = torch.autograd.grad(
                    outputs,
                    self.params,
                    grad_outputs=[probes[i] for i in live],
                    retain_graph=True,
                    allow_unused=True,
                    is_grads_batched=True,
                )
                return [torch.zeros_like(v) if r is None else r for v, r in zip(probes, result, strict=True)]
            except RuntimeError:
                self.batched = False  # some op has no batching rule: loop from now on
        columns = []
        for j in range(probes[0].shape[0]):
            result = torch.autograd.grad(
                outputs,
                self.params,
                grad_outputs=[probes[i][j] for i in live],
                retain_graph=True,
                allow_unused=True,
            )
            columns.append([torch.zeros_like(p) if r is None else r for p, r in zip(self.params, result, strict=True)])
        return [torch.stack([col[i] for col in columns]) for i in range(len(self.params))]


def _rademacher(shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=gen).to(dtype).mul_(2).sub_(1)


def _mean_ci(row: list[float]) -> tuple[float, float]:
    k = len(row)
    mean = math.fsum(row) / k
    if k < 2:
        return mean, math.inf
    var = math.fsum((x - mean) ** 2 for x in row) / (k - 1)
    return mean, Z95 * math.sqrt(var / k)


def _relative(mean: float, half: float) -> float:
    """Half-width over |mean| (absolute value: traces can be negative); an exactly zero,
    zero-spread layer has nothing left to estimate."""
    if half == 0:
        return 0.0
    return half / abs(mean) if mean != 0 else math.inf


def _pct(value: float) -> str:
    return f"{value:.1%}" if math.isfinite(value) else "∞"


@contextmanager
def _grad_only_for(model: nn.Module, params: list[nn.Parameter]) -> Iterator[None]:
    """Differentiate only the layer weights (biases and norms need no graph) and put the model in
    eval mode (dropout off); restore both afterwards. Exported GraphModules have no eval(): they
    keep the mode they were exported in."""
    flags = {p: p.requires_grad for p in model.parameters()}
    wanted = {id(p) for p in params}
    was_training = model.training
    try:
        model.eval()
    except NotImplementedError:
        pass
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in wanted)
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        for p in params:
            if p not in flags:
                p.requires_grad_(False)
        if was_training:
            try:
                model.train()
            except NotImplementedError:
                pass
