"""Pieces the metrics share: which weights get a graph, batched Hessian-vector products, CI maths.

Kept apart from any one metric so that hutchinson, eigen and fisher differentiate the same loss
the same way (and a fix to one is a fix to all).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from workers.errors import AnalysisError, DatasetError
from workers.metrics._loss import LOSSES, OUTPUT_LOSSES, CalibrationLoss

if TYPE_CHECKING:
    from workers.metrics._base import MetricContext

Z95 = 1.96


def check_tolerance(tolerance: Any) -> None:
    """`options.tolerance` must be a positive finite number."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not (0 < tolerance < math.inf):
        raise ValueError(f"options.tolerance: must be a positive number, got {tolerance!r}")


def check_positive_ints(options: Any, *names: str) -> None:
    """Each named attribute of `options` must be an integer ≥ 1."""
    for field_name in names:
        value = getattr(options, field_name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"options.{field_name}: must be a positive integer, got {value!r}")


def check_output_loss(output_loss: Any) -> None:
    if output_loss not in OUTPUT_LOSSES:
        raise ValueError(f"options.output_loss: must be one of {', '.join(OUTPUT_LOSSES)}")


def check_loss(loss: Any) -> None:
    if loss not in LOSSES:
        raise ValueError(f"options.loss: must be one of {', '.join(LOSSES)}, got {loss!r}")


def calibrated_params(metric: str, ctx: MetricContext) -> list[nn.Parameter]:
    """The layer weights of a data-driven metric's context; DatasetError without calibration data,
    AnalysisError without a quantizable layer."""
    if ctx.calibration is None:
        raise DatasetError(f"dataset: the {metric} metric needs calibration data")
    params = [p for _, p in ctx.layers]
    if not params:
        raise AnalysisError("model: no quantizable layer found")
    return params


@contextmanager
def grad_only_for(model: nn.Module, params: list[nn.Parameter]) -> Iterator[None]:
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


class BatchedHvp:
    """H·v for a batch of vectors, summed over calibration batches.

    `__call__(vectors, wrt)`: `vectors[i]` is a (B, *shape_i) batch for layer i, or None for a zero
    block; the result holds (H·v) restricted to the layers in `wrt`, one (B, *shape) tensor each.
    Only the layers with a vector take part in the double backward, so probing a few layers costs
    less than probing all. With one calibration batch the gradient graph is built once and reused;
    with several it is rebuilt per batch so only one batch's graph is alive at a time. Batched
    double backward (is_grads_batched) falls back to a column-by-column loop for ops that vmap lacks.
    """

    def __init__(self, loss: CalibrationLoss, params: list[nn.Parameter], metric: str):
        self.loss = loss
        self.params = params
        self.metric = metric
        self.batched = True
        self._cached: list[torch.Tensor | None] | None = None

    def __call__(self, vectors: Sequence[torch.Tensor | None], wrt: Sequence[int]) -> list[torch.Tensor]:
        batch = next(v.shape[0] for v in vectors if v is not None)
        total = [_zeros(batch, self.params[i]) for i in wrt]
        for grads in self._gradients():
            for acc, hv in zip(total, self._products(grads, vectors, wrt, batch), strict=True):
                acc.add_(hv)
        return total

    def _gradients(self) -> Iterator[list[torch.Tensor | None]]:
        if self._cached is not None:
            yield self._cached
            return
        single = len(self.loss.calibration) == 1
        for value in self.loss.batch_losses():
            if not torch.isfinite(value):
                raise AnalysisError(f"{self.metric}: the loss is not finite on a calibration batch")
            grads = torch.autograd.grad(value, self.params, create_graph=True, allow_unused=True)
            grads = [g if g is not None and g.requires_grad else None for g in grads]
            if single:
                self._cached = grads
            yield grads

    def _products(
        self,
        grads: Sequence[torch.Tensor | None],
        vectors: Sequence[torch.Tensor | None],
        wrt: Sequence[int],
        batch: int,
    ) -> list[torch.Tensor]:
        live = [i for i, g in enumerate(grads) if g is not None and vectors[i] is not None]
        inputs = [self.params[i] for i in wrt]
        zeros = [_zeros(batch, p) for p in inputs]
        if not live:  # the loss is (at most) linear in these weights: H·v = 0
            return zeros
        outputs = [grads[i] for i in live]
        if self.batched:
            try:
                result = torch.autograd.grad(
                    outputs,
                    inputs,
                    grad_outputs=[vectors[i] for i in live],
                    retain_graph=True,
                    allow_unused=True,
                    is_grads_batched=True,
                )
                return [z if r is None else r for z, r in zip(zeros, result, strict=True)]
            except RuntimeError:
                self.batched = False  # some op has no batching rule: loop from now on
        for j in range(batch):
            result = torch.autograd.grad(
                outputs,
                inputs,
                grad_outputs=[vectors[i][j] for i in live],
                retain_graph=True,
                allow_unused=True,
            )
            for z, r in zip(zeros, result, strict=True):
                if r is not None:
                    z[j] = r
        return zeros


def _zeros(batch: int, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros((batch, *like.shape), dtype=like.dtype, device=like.device)


# softmax values turned into float64 at once when labels are drawn (32 MiB)
LABEL_CHUNK_ELEMENTS = 2**22


def sample_labels(logits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One label per row of `logits` (rows, classes) drawn from its softmax, on the CPU so a seed gives
    the same labels on every device. A few rows at a time: a whole batch of LM logits in float64 is
    2× the logits again (64 × 128 tokens × 49,152: 3.2 GB), and row by row the draws are the same."""
    step = max(1, LABEL_CHUNK_ELEMENTS // max(1, logits.shape[-1]))
    drawn = []
    with torch.no_grad():
        for lo in range(0, logits.shape[0], step):
            probs = torch.softmax(logits[lo : lo + step].detach(), dim=-1).cpu().to(torch.float64)
            drawn.append(torch.multinomial(probs, 1, generator=gen).squeeze(1))
    return torch.cat(drawn).to(logits.device)


def rademacher(shape: tuple[int, ...], like: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """±1 entries drawn on the CPU (so a seed gives the same probes on every device), moved to
    `like`'s device and dtype."""
    return torch.randint(0, 2, shape, generator=gen).to(device=like.device, dtype=like.dtype).mul_(2).sub_(1)


def mean_ci(row: Sequence[float]) -> tuple[float, float]:
    """Sample mean and 95% half-width 1.96·s/√k (inf with fewer than two samples)."""
    k = len(row)
    mean = math.fsum(row) / k
    if k < 2:
        return mean, math.inf
    var = math.fsum((x - mean) ** 2 for x in row) / (k - 1)
    return mean, Z95 * math.sqrt(var / k)


def relative(mean: float, half: float) -> float:
    """Half-width (or change) over |mean| (absolute value: traces and eigenvalues can be negative);
    an exactly zero, zero-spread quantity has nothing left to estimate."""
    if half == 0:
        return 0.0
    return half / abs(mean) if mean != 0 else math.inf


def perturbation(weight: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """ΔW = Q(W) − W in float64, so the squared sums of tiny errors do not round away."""
    return quantized.detach().to(torch.float64) - weight.detach().to(torch.float64)


def pct(value: float) -> str:
    return f"{value:.1%}" if math.isfinite(value) else "∞"


def candidate_statistic(metric: str, damage: dict[str, float], half: dict[str, float], samples: int,
                        source: str) -> Any:
    """The LayerStatistic of a metric that measures each candidate's damage itself: the worst
    candidate's damage and half-width, the per-candidate values kept for `measured_damage`;
    AnalysisError naming `source` when any is not finite."""
    from workers.metrics._base import LayerStatistic

    if not all(math.isfinite(v) for v in (*damage.values(), *half.values())):
        raise AnalysisError(f"{metric}: the damage is not finite (NaN/inf in {source})")
    worst = max(damage, key=damage.__getitem__) if damage else None
    return LayerStatistic(
        mean=damage[worst] if worst is not None else 0.0,
        ci_halfwidth=half[worst] if worst is not None else 0.0,
        samples=samples,
        converged=True,
        extra={"damage": damage, "ci": half, "worst": worst},
    )


def measured_damage(metric: str, stat: Any, candidate: Any) -> float:
    """d(l, c) of a metric that measures each candidate's damage itself (gauss_newton, input_covariance).
    A statistic moved by k of its half-widths (how the analysis reads a damage's confidence interval)
    moves d(l, c) by k of that candidate's own half-widths."""
    try:
        value = stat.extra["damage"][candidate.name]
        half = stat.extra["ci"][candidate.name]
    except KeyError:
        raise AnalysisError(f"{metric}: candidate {candidate.name!r} was not measured") from None
    worst = stat.extra.get("worst")
    base, spread = stat.extra["damage"].get(worst, stat.mean), stat.extra["ci"].get(worst, 0.0)
    if stat.mean == base or not (spread > 0 and math.isfinite(spread) and math.isfinite(half)):
        return value
    return max(0.0, value + (stat.mean - base) / spread * half)


def group_damage_ci(values: torch.Tensor, per_row: float, groups: int) -> tuple[float, float]:
    """The mean over rows of the per-row damage, and the 95% half-width over `groups` consecutive
    groups of samples (`values`: one sum over its rows per sample)."""
    n = values.numel()
    value = float(values.sum()) / (n * per_row)
    g = min(groups, n)
    if g < 2:
        return value, math.inf
    parts = [float(p.sum()) / (p.numel() * per_row) for p in torch.tensor_split(values, g)]
    mean = math.fsum(parts) / g
    var = math.fsum((p - mean) ** 2 for p in parts) / (g - 1)
    return value, Z95 * math.sqrt(var / g)
