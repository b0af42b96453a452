"""Stopping on the decision: is the plan settled at the budgets that matter, given the current CIs?

A per-layer statistic s_l (e.g. a Hessian trace) with a 95% half-width h_l gives damage
max(s_l, 0) · coef_lc for candidate c, coef_lc the layer's monotone (running minimum along each
ladder) ‖Q_c(W) − W‖² / n_l: the same numbers the analysis's table will hold. The half-width of that
damage is (max(s+h, 0) − max(s−h, 0)) / 2 · coef (workers.analysis computes the table's the same
way). solver.confidence redraws every layer from that and re-solves; the plan is decided when, at
every budget, at least `target` of the redraws agree with it (same plan, or within `tolerance` of
the redraw's optimal damage). The layers that flip disagreeing redraws are the ones worth probing.

The decision problem has one unit per layer (no groups or ties): deciding each layer is at least as
strict as deciding the groups the final problem may merge them into.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from solver import InfeasibleBudget, Option, Problem, Unit, average_bits_budget, solve
from solver.confidence import DEFAULT_REDRAWS, average_bits_grid, confidence

if TYPE_CHECKING:
    from torch import nn

    from workers.models import LayerInfo
    from workers.quantizers import Quantizer


@dataclass
class Check:
    """One decision check: the lowest confidence over the budgets, per-budget confidences, and the
    layers (indices) that flipped a disagreeing redraw at any budget."""

    decided: bool
    confidence: float
    per_budget: list[float]
    flips: set[int] = field(default_factory=set)


class Decision:
    """Built once per analysis (quantizes every layer × candidate once, for the coefficients)."""

    def __init__(
        self,
        layers: Sequence[tuple[LayerInfo, nn.Parameter]],
        candidates: Sequence[Quantizer],
        *,
        bits: Sequence[float] | None,
        tolerance: float,
        target: float,
        redraws: int = DEFAULT_REDRAWS,
        seed: int = 0,
    ):
        self.names = [info.name for info, _ in layers]
        self.candidates = [q.name for q in candidates]
        self.tolerance = tolerance
        self.target = target
        self.redraws = redraws
        self.seed = seed
        self.coef: list[list[float]] = []
        self.bytes: list[list[float]] = []
        self.weights: list[int] = []
        for info, weight in layers:
            w = weight.detach().to(torch.float32)
            n = max(w.numel(), 1)
            raw = [float((info.quantize(q, w).to(torch.float64) - w.to(torch.float64)).pow(2).sum()) / n for q in candidates]
            self.coef.append(_monotone(raw, candidates))
            self.bytes.append([float(q.bytes(info.weight_shape)) for q in candidates])
            self.weights.append(info.parameters)
        shape = self._problem([1.0] * len(self.names))
        if bits is None:
            self.bits = average_bits_grid(shape)
        else:
            self.bits = [float(b) for b in bits]
            lo = sum(min(r) for r in self.bytes) * 8 / max(sum(self.weights), 1)
            hi = sum(max(r) for r in self.bytes) * 8 / max(sum(self.weights), 1)
            for b in self.bits:
                if not lo <= b <= hi:
                    raise ValueError(
                        f"options.decide_at: {b} average bits is outside what these candidates reach ({lo:.3f}–{hi:.3f})"
                    )

    def check(self, means: Sequence[float], halves: Sequence[float]) -> Check:
        problem = self._problem([max(m, 0.0) for m in means])
        spread = {
            name: {c: h * k for c, k in zip(self.candidates, coef)}
            for name, coef, h in zip(self.names, self.coef, _damage_halves(means, halves))
        }
        per_budget: list[float] = []
        flips: set[int] = set()
        index = {n: i for i, n in enumerate(self.names)}
        decided = True
        for b in self.bits:
            budgets = [average_bits_budget(problem, b)]
            try:
                plan = solve(problem, budgets)
            except InfeasibleBudget:
                continue
            conf = confidence(
                problem, budgets, plan, spread, redraws=self.redraws, tolerance=self.tolerance,
                seed=self.seed, stop_below=self.target if decided else None,
            )
            per_budget.append(conf.confidence)
            flips.update(index[u] for u in conf.flips)
            if conf.confidence < self.target:
                decided = False
        return Check(decided, min(per_budget, default=1.0), per_budget, flips)

    def _problem(self, scales: Sequence[float]) -> Problem:
        units = tuple(
            Unit(
                name=name,
                weights=w,
                options=tuple(
                    Option(candidate=c, damage=s * k, costs={"bytes": nb})
                    for c, k, nb in zip(self.candidates, coef, nbytes)
                ),
            )
            for name, w, coef, nbytes, s in zip(self.names, self.weights, self.coef, self.bytes, scales)
        )
        return Problem(units=units)


def _damage_halves(means: Sequence[float], halves: Sequence[float]) -> list[float]:
    out = []
    for m, h in zip(means, halves):
        h = h if math.isfinite(h) else abs(m) * 10 + 1e-300
        out.append((max(m + h, 0.0) - max(m - h, 0.0)) / 2)
    return out


def _monotone(values: list[float], candidates: Sequence[Quantizer]) -> list[float]:
    """Running minimum in ascending weight bits along each ladder (as workers.analysis does)."""
    ladders: dict[str, list[int]] = defaultdict(list)
    for i, q in enumerate(candidates):
        ladders[q.ladder].append(i)
    out = list(values)
    for members in ladders.values():
        best = math.inf
        for i in sorted(members, key=lambda j: candidates[j].weight_bits):
            best = min(best, values[i])
            out[i] = best
    return out
