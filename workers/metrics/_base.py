"""The plug-in point for sensitivity metrics: every metric fills the same table shape."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch
    from torch import nn

    from workers.data import Calibration
    from workers.models import LayerInfo
    from workers.quantizers import Quantizer


@dataclass
class MetricContext:
    """What a metric may read. The metric owns none of it: it may set `requires_grad` on the
    layer weights while it runs but must restore it, and must leave parameter values unchanged."""

    model: nn.Module
    layers: list[tuple[LayerInfo, nn.Parameter]]
    calibration: Calibration | None
    candidates: list[Quantizer]
    seed: int
    report: Callable[[float, str], None] = lambda fraction, message: None


@dataclass
class LayerStatistic:
    """A metric's per-layer measurement: `mean` of what the metric's `statistic` names, its 95%
    confidence half-width and sample count when the estimate is stochastic (None when exact),
    whether it met the metric's stopping rule, and `extra` state for `damage` (never serialised)."""

    mean: float
    ci_halfwidth: float | None = None
    samples: int | None = None
    converged: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


class Metric(ABC):
    """A sensitivity metric: one expensive pass over the model, then a cheap damage per candidate.

    Rules for implementations:
    - Options are constructor keyword arguments with defaults; unknown ones are a `ValueError`.
    - `measure` runs in the job process, single-threaded from the caller's view; it reports
      progress through `ctx.report(fraction in [0, 1], message)` and is reproducible from `ctx.seed`.
    - `damage` is pure and cheap: it gets the layer's float weight and its dequantized version
      under `candidate` and returns a finite predicted loss increase (≥ 0 for proxies).
    - `needs_data` metrics raise `DatasetError` when `ctx.calibration` is None.
    - `available()` is False when an optional dependency is missing; it never raises.
    - `shardable` metrics (a sum over calibration samples, each sample's randomness seeded by its
      global index) also implement `measure_share(ctx, share)` → JSON-able sums of the samples in
      `share` and `merge_shares(ctx, shares)` → what `measure` returns, equal to it for any split
      (workers.sharding runs them; an analysis's `options.shards` needs one).
    """

    name: ClassVar[str]
    statistic: ClassVar[str]  # what LayerStatistic.mean is, e.g. "hessian_trace"
    needs_data: ClassVar[bool]
    shardable: ClassVar[bool] = False

    def available(self) -> bool:
        return True

    @abstractmethod
    def measure(self, ctx: MetricContext) -> list[LayerStatistic]:
        """One statistic per entry of `ctx.layers`, in the same order."""

    @abstractmethod
    def damage(
        self, stat: LayerStatistic, candidate: Quantizer, weight: torch.Tensor, quantized: torch.Tensor
    ) -> float:
        """Predicted damage of storing this layer's `weight` as `quantized`."""
