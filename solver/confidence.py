"""How sure a plan is: redraw every unit's damage from its sampling distribution and re-solve.

A stochastic metric (Hutchinson) gives each unit's damage as an estimate ± a 95% half-width. One
redraw replaces unit u's damage under candidate c by max(0, d_uc + z_u · h_uc / 1.96), z_u ~ N(0, 1)
drawn once per unit (the candidates of one unit share the statistic they scale, so their errors
move together; units are independent). The plan agrees with a redraw when the redraw's optimum is
the same assignment, or when keeping the plan costs at most `tolerance` of the redraw's optimal
damage (regret ≤ tolerance · D*; a unit whose damage is negligible beside the model's total can
flip without ever making a redraw disagree, so near-zero units never block). `confidence` is the
share of redraws that agree; units that change in disagreeing redraws are the ones whose
uncertainty could still flip the plan. Exact metrics (no half-widths) give confidence 1.0 without
a solve.

Redraws use a fixed seed, so the same problem, budgets and plan give the same confidence.

Speed: most redraws agree, and that can be proven without solving. For one budget, no ties, pins
or allowed subsets, the Lagrangian dual g(λ) = Σ_u min_c (d'_uc + λ·cost_uc) − λ·limit is a lower
bound on the redraw's optimum D* for every λ ≥ 0 (weak duality); when the plan's redrawn damage is
within the tolerance of that bound it is within the tolerance of D* too, and no solve is needed.
Only the redraws this test cannot settle are solved exactly. Small problems (at most
ENUMERATE_LIMIT plans, no ties, pins or allowed subsets) are instead solved for every redraw at once
by enumerating all plans, exact for any number of budgets.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from solver._solve import solve
from solver.plan import Plan
from solver.problem import Budget, Option, Problem, Unit

__all__ = ["Confidence", "DEFAULT_REDRAWS", "DEFAULT_TOLERANCE", "Halfwidths", "average_bits_grid", "confidence"]

Z95 = 1.96
ENUMERATE_LIMIT = 4096
DEFAULT_REDRAWS = 64
DEFAULT_TOLERANCE = 0.05

# unit name → candidate → 95% half-width of that option's damage (missing: exact)
Halfwidths = Mapping[str, Mapping[str, float]]


@dataclass(frozen=True)
class Confidence:
    """`confidence`: share of the `redraws` that agree with the plan (see module docstring);
    `flips`: unit → share of redraws that disagree and give the unit another candidate, largest
    first; `exact`: no unit had a half-width (confidence 1.0 by definition); `complete`: False when
    the count stopped early because the share could no longer reach the `stop_below` asked for."""

    confidence: float
    redraws: int
    tolerance: float
    flips: Mapping[str, float] = field(default_factory=dict)
    exact: bool = False
    complete: bool = True

    def to_dict(self, top: int = 10) -> dict:
        return {
            "confidence": self.confidence,
            "redraws": self.redraws,
            "tolerance": self.tolerance,
            "exact": self.exact,
            "uncertain_units": [{"unit": u, "share": s} for u, s in list(self.flips.items())[:top]],
        }


def confidence(
    problem: Problem,
    budgets: Sequence[Budget],
    plan: Plan | Mapping[str, str],
    halfwidths: Halfwidths,
    *,
    redraws: int = DEFAULT_REDRAWS,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
    backend: str = "auto",
    stop_below: float | None = None,
) -> Confidence:
    """Share of `redraws` redrawn problems whose optimum under `budgets` agrees with `plan` (a Plan
    or its assignment, unit → candidate).

    `stop_below`: stop counting once the share can no longer reach it (a stopping rule only needs
    to know that); the returned confidence then counts the redraws done so far."""
    if redraws < 1:
        raise ValueError(f"redraws must be ≥ 1, got {redraws}")
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise ValueError(f"tolerance must be a finite number ≥ 0, got {tolerance}")
    assignment = plan.assignment if isinstance(plan, Plan) else dict(plan)
    spread = _spread(problem, halfwidths)
    if not spread.any():
        return Confidence(1.0, 0, tolerance, exact=True)
    base = _damages(problem)
    rng = np.random.default_rng(seed)
    chosen = [assignment[u.name] for u in problem.units]
    index = [[o.candidate for o in u.options].index(c) for u, c in zip(problem.units, chosen)]
    allowed_misses = None if stop_below is None else math.floor((1.0 - stop_below) * redraws + 1e-9)
    dense = _dense(problem, base)
    z_all = rng.standard_normal((redraws, len(problem.units)))
    drawn_all = np.maximum(dense[None, :, :] + z_all[:, :, None] * spread[None, :, :] / Z95, 0.0)
    kept_all = drawn_all[:, np.arange(len(index)), index].sum(axis=1)
    enumerated = _enumerate(problem, budgets, drawn_all, kept_all, index, tolerance)
    if enumerated is not None:
        agree_mask, others = enumerated
        flips: dict[str, int] = {}
        for r in np.flatnonzero(~agree_mask):
            for u, j, k in zip(problem.units, index, others[r]):
                if j != k:
                    flips[u.name] = flips.get(u.name, 0) + 1
        shares = {u: n / redraws for u, n in sorted(flips.items(), key=lambda kv: (-kv[1], kv[0]))}
        return Confidence(float(agree_mask.mean()), redraws, tolerance, shares)
    proven = _proven(problem, budgets, drawn_all, kept_all, tolerance)
    agree = misses = done = 0
    flips: dict[str, int] = {}
    for r in range(redraws):
        done += 1
        if proven[r]:
            agree += 1
            continue
        drawn = [drawn_all[r, i, : len(row)] for i, row in enumerate(base)]
        other = solve(_with_damages(problem, drawn), budgets, backend=backend)
        kept = float(kept_all[r])
        regret = kept - other.damage
        if other.assignment == assignment or regret <= tolerance * max(other.damage, 0.0) + 1e-300:
            agree += 1
        else:
            misses += 1
            for u, c in zip(problem.units, chosen):
                if other.assignment[u.name] != c:
                    flips[u.name] = flips.get(u.name, 0) + 1
            if allowed_misses is not None and misses > allowed_misses:
                break
    shares = {u: n / done for u, n in sorted(flips.items(), key=lambda kv: (-kv[1], kv[0]))}
    return Confidence(agree / done, done, tolerance, shares, complete=done == redraws)


def average_bits_grid(problem: Problem, points: int = 5) -> list[float]:
    """`points` average-bits values evenly inside the feasible range (the ends excluded: there
    only one plan exists), from the cheapest to the largest option of every unit."""
    total = problem.total_weights
    if total <= 0 or "bytes" not in problem.cost_names:
        return []
    lo = sum(min(o.costs.get("bytes", 0.0) for o in problem.permitted(u)) for u in problem.units) * 8.0 / total
    hi = sum(max(o.costs.get("bytes", 0.0) for o in problem.permitted(u)) for u in problem.units) * 8.0 / total
    if not hi > lo:
        return []
    return [lo + (hi - lo) * (i + 1) / (points + 1) for i in range(points)]


def _damages(problem: Problem) -> list[np.ndarray]:
    return [np.array([o.damage for o in u.options], dtype=float) for u in problem.units]


def _spread(problem: Problem, halfwidths: Halfwidths) -> np.ndarray:
    width = max(len(u.options) for u in problem.units)
    out = np.zeros((len(problem.units), width))
    for i, u in enumerate(problem.units):
        row = halfwidths.get(u.name) or {}
        for j, o in enumerate(u.options):
            h = float(row.get(o.candidate, 0.0) or 0.0)
            if not (math.isfinite(h) and h >= 0):
                raise ValueError(f"half-width of unit {u.name!r} candidate {o.candidate!r} must be finite and ≥ 0")
            out[i, j] = h
    return out


def _enumerate(problem, budgets, drawn, kept, index, tolerance):
    """(agrees per redraw, the redraw's optimal option indices) by trying every plan at once, or
    None when there are too many plans or ties / pins / allowed subsets to honour."""
    sizes = [len(u.options) for u in problem.units]
    if problem.ties or problem.pins or problem.allowed or math.prod(sizes) > ENUMERATE_LIMIT:
        return None
    grids = np.stack([g.ravel() for g in np.meshgrid(*[np.arange(n) for n in sizes], indexing="ij")], axis=1)
    feasible = np.ones(len(grids), dtype=bool)
    for b in budgets:
        cost = np.zeros(len(grids))
        for i, u in enumerate(problem.units):
            cost += np.array([o.costs.get(b.cost, 0.0) for o in u.options])[grids[:, i]]
        feasible &= cost <= b.limit * (1 + 1e-9) + 1e-9
    if not feasible.any():
        return None
    grids = grids[feasible]
    totals = np.zeros((len(drawn), len(grids)))
    for i in range(len(sizes)):
        totals += drawn[:, i, :][:, grids[:, i]]
    best = totals.argmin(axis=1)
    optimum = totals[np.arange(len(drawn)), best]
    agree = kept - optimum <= tolerance * np.maximum(optimum, 0.0) + 1e-300
    return agree, grids[best]


def _dense(problem: Problem, base: list[np.ndarray]) -> np.ndarray:
    out = np.zeros((len(base), max(len(r) for r in base)))
    for i, row in enumerate(base):
        out[i, : len(row)] = row
    return out


def _proven(
    problem: Problem, budgets: Sequence[Budget], drawn: np.ndarray, kept: np.ndarray, tolerance: float
) -> np.ndarray:
    """Per redraw: True when the Lagrangian bound proves the plan within tolerance (see module
    docstring); all False when the bound does not apply (several budgets, ties, pins, allowed)."""
    no = np.zeros(len(drawn), dtype=bool)
    if len(budgets) != 1 or problem.ties or problem.pins or problem.allowed or tolerance <= 0:
        return no
    (budget,) = budgets
    units = problem.units
    width = drawn.shape[2]
    cost = np.zeros((len(units), width))
    valid = np.zeros((len(units), width), dtype=bool)
    for i, u in enumerate(units):
        for j, o in enumerate(u.options):
            cost[i, j] = o.costs.get(budget.cost, 0.0)
            valid[i, j] = True
    base = np.where(valid, drawn.mean(axis=0), np.inf)
    lam_star = _multiplier(base, cost, budget.limit)
    if lam_star is None:
        return no
    d = np.where(valid[None], drawn, np.inf)

    def bounds(rows: np.ndarray, lams: np.ndarray) -> np.ndarray:
        out = np.full(len(rows), -np.inf)
        chunk = max(1, int(4e6 // max(1, len(lams) * drawn.shape[1] * width)))
        for start in range(0, len(rows), chunk):
            part = d[rows[start : start + chunk]]
            lag = (part[:, None] + lams[None, :, None, None] * cost[None, None]).min(axis=3).sum(axis=2)
            out[start : start + chunk] = (lag - lams[None, :] * budget.limit).max(axis=1)
        return out

    # λ* first (it settles most redraws), then a wider grid of λ for the rest only.
    everyone = np.arange(len(drawn))
    best = bounds(everyone, np.array([lam_star]))
    proven = kept - best <= tolerance * np.maximum(best, 0.0)
    rest = np.flatnonzero(~proven)
    if len(rest) and lam_star > 0:
        wide = bounds(rest, np.concatenate([[0.0], lam_star * np.geomspace(1 / 16, 16, 33)]))
        proven[rest] = kept[rest] - wide <= tolerance * np.maximum(wide, 0.0)
    return proven


def _multiplier(damage: np.ndarray, cost: np.ndarray, limit: float) -> float | None:
    """A λ near the optimal dual multiplier: the smallest whose Lagrangian choice fits `limit`
    (bisection; 0 when the cheapest-damage choice already fits, None when nothing fits)."""
    rows = np.arange(len(damage))

    def spent(lam: float) -> float:
        return float(cost[rows, (damage + lam * cost).argmin(axis=1)].sum())

    if spent(0.0) <= limit:
        return 0.0
    hi = 1.0
    for _ in range(200):
        if spent(hi) <= limit:
            break
        hi *= 4.0
    else:
        return None
    lo = 0.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if spent(mid) <= limit else (mid, hi)
    return hi


def _with_damages(problem: Problem, damages: list[np.ndarray]) -> Problem:
    units = tuple(
        Unit(u.name, u.weights, tuple(Option(o.candidate, float(d), o.costs) for o, d in zip(u.options, row)))
        for u, row in zip(problem.units, damages)
    )
    return Problem(units=units, ties=problem.ties, pins=problem.pins, allowed=problem.allowed)
