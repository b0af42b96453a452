"""Per-layer Hessian trace by Hutchinson's method (HAWQ-v2/v3 sensitivity).

For a Rademacher vector v (entries ±1), E[vᵀHv] = Tr(H). One Hessian-vector product of the whole
loss gives every layer's sample at once: v_lᵀ(Hv)_l estimates Tr(H_ll). Several probes share one
gradient graph (batched double backward, `is_grads_batched`). bench/sensitivity.py measures it
against torch.func vmap over jvp(grad): 1.4–2.4 fwd+bwd per probe against 1.5–2.0, vmap up to
~20% faster on the CNN and a 430k-weight MLP, slower on the small MLP. Both meet the ≤ 3 target;
this path stays because it differentiates the same CalibrationLoss graph as everything else
(several calibration batches, any device, a per-column loop for ops without a batching rule),
where vmap would need a second, functional copy of the loss.
Stopping (`stop`): "decision" (the default) stops when more probes would not change the plan:
every layer's trace is redrawn from its sampling distribution, the plan re-solved at the budgets
that matter (`decide_at` average bits, else a grid across the feasible range) and probing ends
when at least `decision_confidence` of the redraws agree at every budget (same plan, or within
`decision_tolerance` of the redraw's optimal damage; workers.metrics._decision). Only the layers
that flipped a disagreeing redraw keep being probed (with `shrink`). A near-zero or dead layer
cannot flip a plan by more than its own negligible damage, so it never blocks. "ci" is the older
rule: every layer's relative 95% half-width 1.96·s/√k / |mean| at most `tolerance`. Both start
after `min_probes` and end at `max_probes` (default 256 for "decision", 1024 for "ci") or after
`max_seconds` of probing; `stopping` (set by `measure`) says which ended it, and the layers still
undecided are `converged: false`.
Checks run at geometrically spaced probe counts (each about 1.25× the last, rounded to whole
probe batches), never on a clock, so the same seed stops at the same probe.

Variance reduction (`shrink`): v_lᵀ(Hv)_l = v_lᵀH_ll v_l + Σ_{m≠l} v_lᵀH_lm v_m; the cross terms add
variance but nothing to the mean. Once a layer has converged it is dropped from the probe vector,
so the layers still being probed stop paying for the cross terms of the finished ones. Every
sample stays an unbiased estimate of the same Tr(H_ll), so pooling them keeps the mean unbiased
and s²/k an honest variance of it. Measured on the digits CNN (bench/sensitivity.py) this cuts the
probes of the noisy 144-weight conv1 roughly in half; the cost per probe is unchanged.

Damage (HAWQ-v3): Ω_l(b) = max(Tr(H_l), 0) / n_l · ‖Q_b(W_l) − W_l‖². The default loss is
label-free (workers.metrics._loss), whose Hessian is PSD: every probe vᵀHv is ≥ 0. With
`loss="cross_entropy"` a trace estimate can be negative; its damage is clamped to 0 (no
second-order harm predicted) and the table carries a warning for it (workers.table), never silently.
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
    mean_ci,
    pct,
    perturbation,
    rademacher,
    relative,
)
from solver.confidence import DEFAULT_TOLERANCE
from workers.metrics._decision import Decision
from workers.metrics._loss import CalibrationLoss

if TYPE_CHECKING:
    from torch import nn

    from workers.quantizers import Quantizer

STOPS = ("decision", "ci")
# A decision that 256 probes have not settled sits on a near-tie between plans whose damages differ by
# about the tolerance: more probes buy little, and the plan says how sure it is. The CI rule needs more.
DEFAULT_MAX_PROBES = {"decision": 256, "ci": 1024}


def _number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


@dataclass
class Hutchinson(Metric):
    """Options: `stop` "decision" or "ci" (see module docstring); `tolerance` relative CI
    half-width of the "ci" rule; `decide_at` average bits (a number or a list) the plan must be
    decided at; `decision_confidence` share of agreeing redraws that decides; `decision_tolerance`
    relative damage within which another plan still agrees; `min_probes` per layer before a rule
    may fire (the sample deviation needs a few); `max_probes` per layer and `max_seconds` of
    probing, hard caps; `probe_batch` probes sharing one gradient graph; `shrink` drops settled
    layers from the probe vector; `loss` which loss ("auto", "label_free", "cross_entropy");
    `output_loss` for label-free mode ("kl" or "mse")."""

    stop: str = "decision"
    tolerance: float = 0.1
    decide_at: float | list[float] | None = None
    decision_confidence: float = 0.95
    decision_tolerance: float = DEFAULT_TOLERANCE
    min_probes: int = 16
    max_probes: int | None = None  # 256 for stop="decision", 1024 for "ci" (module docstring)
    max_seconds: float = 300.0
    probe_batch: int = 16
    shrink: bool = True
    loss: str = "auto"
    output_loss: str = "kl"

    name: ClassVar[str] = "hutchinson"
    statistic: ClassVar[str] = "hessian_trace"
    needs_data: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_tolerance(self.tolerance)
        check_positive_ints(self, "min_probes", "probe_batch", *(() if self.max_probes is None else ("max_probes",)))
        if self.min_probes < 2:
            raise ValueError("options.min_probes: at least 2 probes are needed for a confidence interval")
        if self.max_probes is not None and self.max_probes < self.min_probes:
            raise ValueError(
                f"options.max_probes: must be ≥ min_probes ({self.min_probes}), got {self.max_probes}"
            )
        if not isinstance(self.shrink, bool):
            raise ValueError(f"options.shrink: must be true or false, got {self.shrink!r}")
        check_output_loss(self.output_loss)
        check_loss(self.loss)
        if self.stop not in STOPS:
            raise ValueError(f"options.stop: must be one of {', '.join(STOPS)}, got {self.stop!r}")
        if not _number(self.max_seconds) or not self.max_seconds > 0:
            raise ValueError(f"options.max_seconds: must be a positive number of seconds, got {self.max_seconds!r}")
        if not _number(self.decision_confidence) or not 0 < self.decision_confidence <= 1:
            raise ValueError(f"options.decision_confidence: must be in (0, 1], got {self.decision_confidence!r}")
        if not _number(self.decision_tolerance) or not 0 <= self.decision_tolerance < math.inf:
            raise ValueError(f"options.decision_tolerance: must be a number ≥ 0, got {self.decision_tolerance!r}")
        bits = self.decide_at
        if bits is not None:
            bits = [bits] if _number(bits) else bits
            if not isinstance(bits, list) or not bits or not all(_number(b) and b > 0 for b in bits):
                raise ValueError(f"options.decide_at: must be average bits (a positive number or a list), got {self.decide_at!r}")
            self.decide_at = [float(b) for b in bits]
        self.stopping: dict = {}

    def measure(self, ctx: MetricContext) -> list[LayerStatistic]:
        params = calibrated_params(self.name, ctx)
        self.stopping = {}
        with grad_only_for(ctx.model, params):
            loss = CalibrationLoss(ctx.model, ctx.calibration, output_loss=self.output_loss, loss=self.loss)
            decision = None
            if self.stop == "decision" and ctx.candidates:  # no candidates: no plan to decide, the "ci" rule
                decision = Decision(
                    ctx.layers, ctx.candidates, bits=self.decide_at, tolerance=self.decision_tolerance,
                    target=self.decision_confidence, seed=int(ctx.seed),
                )
            samples, unsettled = self._probe(loss, params, ctx, decision)
        stats = []
        for i, row in enumerate(samples):
            mean, half = mean_ci(row)
            if not (math.isfinite(mean) and math.isfinite(half)):
                raise AnalysisError("hutchinson: the trace estimate is not finite (NaN/inf in the loss)")
            stats.append(LayerStatistic(mean=mean, ci_halfwidth=half, samples=len(row), converged=i not in unsettled))
        return stats

    def damage(
        self, stat: LayerStatistic, candidate: Quantizer, weight: torch.Tensor, quantized: torch.Tensor
    ) -> float:
        n = weight.numel()
        return max(stat.mean, 0.0) / n * float(perturbation(weight, quantized).pow(2).sum()) if n else 0.0

    def _probe(
        self, loss: CalibrationLoss, params: list[nn.Parameter], ctx: MetricContext, decision: Decision | None
    ) -> tuple[list[list[float]], set[int]]:
        """Per-layer samples, and the layers the rule had not settled when probing ended."""
        cap = self.max_probes or DEFAULT_MAX_PROBES["ci" if decision is None else "decision"]
        cap = max(cap, self.min_probes)
        gen = torch.Generator().manual_seed(int(ctx.seed))
        samples: list[list[float]] = [[] for _ in params]
        hvp = BatchedHvp(loss, params, self.name)
        live = list(range(len(params)))
        started = time.perf_counter()
        columns = 0
        shown = 0.0  # progress never moves backwards, even when the worst CI widens again
        self.stopping["rule"] = "ci" if decision is None else "decision"
        next_check = self.min_probes
        last = None
        while True:
            k = min(len(samples[i]) for i in live)
            count = min(self.probe_batch, cap - k)
            # Every layer draws its probe, live or not, so a layer's probes do not depend on when
            # the others converged: the same seed gives the same vectors whatever `shrink` is.
            probes = [rademacher((count, *p.shape), p, gen) for p in params]
            probed = set(live)
            products = hvp([v if i in probed else None for i, v in enumerate(probes)], live)
            for i, hv in zip(live, products, strict=True):
                per_probe = (probes[i].to(torch.float64) * hv.to(torch.float64)).flatten(1).sum(dim=1)
                samples[i].extend(per_probe.tolist())
            columns += count
            elapsed = time.perf_counter() - started
            worst_all = max(relative(*mean_ci(row)) for row in samples)
            capped = [i for i in live if len(samples[i]) >= cap]
            warm = all(len(samples[i]) >= self.min_probes for i in live)
            if decision is None:
                unfinished = [
                    i for i in live if len(samples[i]) < self.min_probes or relative(*mean_ci(samples[i])) > self.tolerance
                ]
                if not unfinished:
                    return self._done(ctx, samples, "ci", set(), started, worst_all)
                remaining = [i for i in unfinished if i not in capped]
            else:
                k_live = min(len(samples[i]) for i in live)
                if warm and k_live >= next_check:
                    means, halves = zip(*(mean_ci(row) for row in samples))
                    last = decision.check(means, halves)
                    step = self.probe_batch
                    next_check = max(k_live + step, -(-int(k_live * 1.25) // step) * step)
                    self.stopping["confidence"] = last.confidence
                    self.stopping["confidence_per_budget"] = dict(zip(map(str, decision.bits), last.per_budget))
                    if last.decided:
                        return self._done(ctx, samples, "decided", set(), started, worst_all)
                unfinished = sorted(last.flips) if last is not None and warm and last.flips else live
                remaining = [i for i in unfinished if i not in capped]
            if not remaining:
                return self._done(ctx, samples, "max_probes", set(unfinished), started, worst_all)
            if elapsed >= self.max_seconds:
                return self._done(ctx, samples, "max_seconds", set(unfinished), started, worst_all)
            if self.shrink:
                live = remaining
            k = max(len(samples[i]) for i in remaining)
            if decision is None:
                needed = max(
                    len(samples[i]) * (relative(*mean_ci(samples[i])) / self.tolerance) ** 2 for i in remaining
                )
                needed = needed if math.isfinite(needed) else cap
                target = min(cap, max(self.min_probes, math.ceil(needed), k + 1))
                eta = f", ETA {elapsed / columns * (target - k):.0f} s"
                shown = max(shown, k / target)
                rule = f"worst relative CI {pct(worst_all)} (target {self.tolerance:.0%})"
            else:
                shown = max(shown, min(k / cap, elapsed / self.max_seconds))
                conf = "not checked yet" if last is None else f"plan confidence {last.confidence:.0%}"
                rule = f"{conf} (target {self.decision_confidence:.0%})"
                eta = f", at most {max(self.max_seconds - elapsed, 0):.0f} s left"
            ctx.report(
                shown,
                f"hutchinson: {k} probes, {rule}, {len(remaining)} of {len(params)} layers still probed{eta}",
            )

    def _done(self, ctx, samples, reason, unsettled, started, worst):
        k = max(len(row) for row in samples)
        self.stopping.update(reason=reason, probes=k)
        ctx.report(1.0, f"hutchinson: {k} probes, stopped: {reason}, worst relative CI {pct(worst)}")
        return samples, unsettled
