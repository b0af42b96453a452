"""Exact dynamic programme over a cost lattice: every budget's optimum in one pass.

When every option's cost differs from its group's cheapest by an integer multiple of one step s
(integer byte counts: the gcd of the differences; floats such as 0.37·k: a step found by trying
small divisors of the least difference and checked to 1e-12 of the largest cost), a plan's total
cost is base + k·s for an integer k ≤ R = Σ_g max_j k_gj. Then

    f_g[k] = min_j f_{g−1}[k − k_gj] + obj_gj

vectorised in numpy per group (one shifted minimum per option), gives the least objective at every
reachable total at once, and argmin per group as uint8 lets any budget's plan be read back. A budget
B admits exactly the levels k ≤ ⌊(B − base)/s⌋, so the optimum at B is the prefix minimum of f:
a whole frontier costs one pass plus one backtrack per point (vectorised across the points).

Why this and not more branch and bound: on tables with many identical costs (layers of the same
shape) the LP bound stays weak for a long way and the search explodes, while the number of
distinct totals stays small; the DP's work is Σ_g |options| × (levels so far), independent of how
degenerate the damages are.

Limits: memory n × (R + 1) bytes for the choices (capped at MAX_TABLE_BYTES) and work
Σ options × levels (capped at MAX_WORK); past either, or with costs off any lattice, callers fall
back to the branch and bound (solver/backends/_mckp.py) or the ILP. Options dominated within their
group (no cheaper-or-equal cost with less-or-equal objective elsewhere in the group) are dropped
first: they are never needed and they widen R.

Exactness with floats: a lattice level's plans have float totals within n·1e-12·max|c| of
base + k·s, so the budget's level is taken with that margin and the chosen plan is checked against
the budget with the solver's own rule (`fits`); a plan that fails the check is not returned (the
caller falls back), never a wrong one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from solver._compiled import CompiledProblem
from solver.backends._ilp import FEAS_REL
from solver.backends.base import Backend, Outcome, single_budget

MAX_TABLE_BYTES = 256 * 2**20
MAX_WORK = 6e8  # element operations per pass; about a second of numpy on one core
_LATTICE_REL = 1e-12
_MAX_DIVISOR = 64


def undominated(cost: np.ndarray, obj: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """`valid` without options another option of the same group beats or equals in both cost and
    objective (of exact duplicates the first is kept)."""
    c = np.where(valid, cost, np.inf)
    d = np.where(valid, obj, np.inf)
    m = c.shape[1]
    keep = valid.copy()
    idx = np.arange(m)
    for j in range(m):
        le = (c <= c[:, j : j + 1]) & (d <= d[:, j : j + 1]) & valid
        strict = (c < c[:, j : j + 1]) | (d < d[:, j : j + 1])
        earlier_same = idx[None, :] < j
        beaten = (le & (strict | earlier_same)).any(axis=1)
        keep[:, j] &= ~beaten
    return keep


@dataclass(frozen=True)
class Lattice:
    """Costs as base + k·step: `levels[g, j]` = k of option j over its group's cheapest (−1 where
    not valid), `base` = Σ_g cheapest cost, `margin` = float error allowance, in levels."""

    step: float
    levels: np.ndarray
    row_min: np.ndarray
    base: float
    margin: float

    @property
    def top(self) -> int:
        return int(self.levels.max(axis=1).sum())

    def level_of(self, budget: float, slack: float | None = None) -> int:
        """Highest level a plan within `budget` (plus the solver's slack) can have (−1: none)."""
        if slack is None:
            slack = FEAS_REL * max(1.0, abs(budget))
        room = budget + slack - self.base
        return int(np.floor(room / self.step + self.margin)) if self.step > 0 else (0 if room >= 0 else -1)


def find_lattice(cost: np.ndarray, valid: np.ndarray) -> Lattice | None:
    """The coarsest step every cost difference within a group is an integer multiple of, or None."""
    c = np.where(valid, cost, np.nan)
    if not np.all(np.isfinite(c[valid])):
        return None
    row_min = np.nanmin(c, axis=1)
    diffs = c - row_min[:, None]
    flat = diffs[valid]
    scale = float(np.abs(c[valid]).max()) if flat.size else 0.0
    n = cost.shape[0]
    positive = flat[flat > 0]
    if positive.size == 0:
        levels = np.where(valid, 0, -1).astype(np.int64)
        return Lattice(0.0, levels, row_min, float(row_min.sum()), 0.0)
    integral = scale < 2.0**52 and np.array_equal(c[valid], np.round(c[valid]))
    if integral:
        step = float(np.gcd.reduce(positive.astype(np.int64)))
        levels = np.where(valid, np.round(np.nan_to_num(diffs) / step), -1).astype(np.int64)
        return Lattice(step, levels, row_min, float(row_min.sum()), 1e-9)
    least = float(positive.min())
    tol = _LATTICE_REL * scale
    for q in range(1, _MAX_DIVISOR + 1):
        k = np.round(flat * q / least)
        if k.max() > 2.0**40:
            return None
        # least-squares step for these integers, then every difference must sit on its level
        step = float((k * flat).sum() / (k * k).sum())
        if np.all(np.abs(flat - k * step) <= tol):
            levels = np.full(valid.shape, -1, dtype=np.int64)
            levels[valid] = k.astype(np.int64)
            margin = (n + 1) * tol / step + 1e-9
            return Lattice(step, levels, row_min, float(row_min.sum()), margin)
    return None


@dataclass(frozen=True)
class Table:
    """f[k]: least objective at level k (inf: unreachable); choices[g][k]: option of group g in a
    plan reaching level k of the first g+1 groups optimally."""

    f: np.ndarray
    choices: list[np.ndarray]
    levels: np.ndarray
    order: np.ndarray  # the order groups were added in

    def best_levels(self, tops: np.ndarray) -> np.ndarray:
        """For each top level, the least level ≤ top reaching the least objective there (−1: none)."""
        f = self.f
        run = np.minimum.accumulate(f)
        new = np.r_[True, f[1:] < run[:-1]] & np.isfinite(f)
        arg = np.maximum.accumulate(np.where(new, np.arange(f.size), -1))
        tops = np.minimum(tops, f.size - 1)
        return np.where(tops >= 0, arg[np.maximum(tops, 0)], -1)

    def backtrack(self, ks: np.ndarray) -> np.ndarray:
        """Choices (points × groups) of the plans reaching levels `ks` (all ≥ 0 and reachable)."""
        ks = np.asarray(ks, dtype=np.int64).copy()
        n = len(self.choices)
        out = np.empty((ks.size, n), dtype=np.intp)
        for g in self.order[::-1].tolist():
            o = self.choices[g][ks].astype(np.intp)
            out[:, g] = o
            ks -= self.levels[g, o]
        assert (ks == 0).all()
        return out


def work_of(levels: np.ndarray, top: int) -> tuple[float, float]:
    """(element operations, bytes of choices) of a pass up to level `top` (groups as `run` orders them)."""
    levels = levels[np.argsort(levels.max(axis=1), kind="stable")]
    widths = np.minimum(np.cumsum(np.maximum(levels.max(axis=1), 0)), top) + 1
    count = (levels >= 0).sum(axis=1)
    return float((widths * count).sum()), float(widths.sum())


def affordable(levels: np.ndarray, top: int) -> bool:
    work, mem = work_of(levels, top)
    return work <= MAX_WORK and mem <= MAX_TABLE_BYTES


def run(levels: np.ndarray, obj: np.ndarray, top: int) -> Table:
    """The DP over groups, levels 0..top (options with level −1 are skipped). Groups go in order
    of increasing range, so the table stays narrow for as long as possible (≈ 40 % less work on the
    benchmark's mix of layer sizes than table order).

    Per option: one shifted add into a scratch buffer, one compare, two masked copies (no
    temporaries; about 1 ns per level and option on one core)."""
    n, m = levels.shape
    f = np.zeros(1)
    order = np.argsort(levels.max(axis=1), kind="stable")
    choices: list[np.ndarray] = [np.empty(0, dtype=np.uint8)] * n
    cap = min(int(np.maximum(levels, 0).max(axis=1).sum()), top) + 1
    buf = np.empty(cap)
    mask = np.empty(cap, dtype=bool)
    for g in order.tolist():
        ks = levels[g]
        width = min(f.size - 1 + int(ks.max()), top) + 1
        new = np.full(width, np.inf)
        arg = np.zeros(width, dtype=np.uint8)
        for j in range(m):
            k = int(ks[j])
            if k < 0 or k >= width:
                continue
            span = min(f.size, width - k)
            cand, better = buf[:span], mask[:span]
            np.add(f[:span], obj[g, j], out=cand)
            view = new[k : k + span]
            np.less(cand, view, out=better)
            np.copyto(view, cand, where=better)
            np.copyto(arg[k : k + span], np.uint8(j), where=better)
        f = new
        choices[g] = arg
    return Table(f, choices, levels, order)


def solve_budget(
    cost: np.ndarray, obj: np.ndarray, valid: np.ndarray, budget: float, slack: float | None = None
) -> tuple[str, np.ndarray | None]:
    """One budget by DP up to its level: ("optimal", choice), ("infeasible", None), or
    ("unavailable", None) when the costs are off a lattice, the pass is too big, or the plan fails
    the float check (rounding at the very edge of a level)."""
    if slack is None:
        slack = FEAS_REL * max(1.0, abs(budget))
    keep = undominated(cost, obj, valid)
    lat = find_lattice(cost, keep)
    if lat is None:
        return "unavailable", None
    top = min(lat.level_of(budget, slack), lat.top)
    if top < 0:
        return "infeasible", None
    if not affordable(lat.levels, top):
        return "unavailable", None
    table = run(lat.levels, obj, top)
    k = table.best_levels(np.array([top]))[0]
    if k < 0:
        return "infeasible", None
    choice = table.backtrack(np.array([k]))[0]
    total = float(cost[np.arange(choice.size), choice].sum())
    if total > budget + slack:
        return "unavailable", None
    return "optimal", choice


class DpBackend(Backend):
    """The lattice DP as a back-end for zero or one budget: the whole table up to the budget's
    level, then one backtrack. Off a lattice, or past the memory/work caps, it answers with the
    knapsack B&B instead (same exactness), so it accepts every one-budget problem."""

    name = "dp"
    max_budgets = 1

    def available(self) -> bool:
        return True

    def solve(
        self,
        compiled: CompiledProblem,
        objective: np.ndarray,
        limits: Mapping[str, float],
        *,
        time_limit: float | None = None,
        start: np.ndarray | None = None,
    ) -> Outcome:
        from solver.backends._mckp import Knapsack

        cost, limit = single_budget(compiled, limits, "dp")
        status, choice = solve_budget(cost, objective, compiled.valid, limit)
        if status == "optimal":
            value = float(objective[np.arange(choice.size), choice].sum())
            return Outcome(choice, "optimal", value)
        if status == "infeasible":
            return Outcome(None, "infeasible", float("inf"))
        return Knapsack(cost, objective, compiled.valid).solve(limit, time_limit=time_limit, start=start)
