"""Pareto frontiers of damage against costs: exact points on a budget grid, and the convex hull."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from solver._compiled import CompiledProblem, compile_problem, limits_of
from solver._solve import check_reachable, solve_compiled
from solver.backends import auto_backend, get_backend
from solver.backends import _lattice
from solver.backends._ilp import fits
from solver.backends._mckp import Knapsack, objective_tolerance
from solver.backends._two import TwoBudget
from solver.errors import InfeasibleBudget
from solver.plan import Plan
from solver.problem import Budget, Problem

_SAME_REL = 1e-12


@dataclass(frozen=True)
class Frontier:
    """Damage versus one cost: plans sorted by that cost, each optimal for a budget equal to its own
    cost (under any extra budgets), none dominated by another."""

    cost: str
    points: list[Plan]


@dataclass(frozen=True)
class Frontier2D:
    """Damage versus two costs: non-dominated plans, each optimal for limits equal to its own costs."""

    costs: tuple[str, str]
    points: list[Plan]


def frontier(
    problem: Problem,
    cost: str = "bytes",
    points: int = 100,
    *,
    budgets: Sequence[Budget] = (),
    backend: str = "auto",
) -> Frontier:
    """Exact plans for `points` budgets evenly spaced from the cheapest plan's `cost` to the cost of
    the least-damage plan; duplicates and dominated plans dropped.

    With no extra budgets and costs on a lattice of manageable range ("auto" or "dp"), one dynamic
    programme over the cost lattice gives every budget's optimum at once (solver/backends/_lattice.py);
    otherwise (or with backend="mckp") the knapsack method answers each budget from one shared hull,
    warm-started from its neighbour's plan. With one extra budget ("auto" or "mckp2") the exact
    two-budget knapsack answers each point (see _two_frontier); with more, or another back-end
    named, `solve` does (checked as it always is), warm-started too.
    """
    if points < 1:
        raise ValueError(f"points must be ≥ 1, got {points}")
    compiled = compile_problem(problem)
    compiled.cost(cost)
    extra = limits_of(compiled, [b for b in budgets if b.cost != cost])
    cap = min((b.limit for b in budgets if b.cost == cost), default=np.inf)
    if not extra and backend in ("auto", "dp", "mckp"):
        plans = None
        if backend != "mckp":
            plans = _lattice_frontier(compiled, cost, points, cap)
        if plans is None:
            plans = _knapsack_frontier(compiled, cost, points, cap)
    elif len(extra) == 1 and backend in ("auto", "mckp2"):
        plans = _two_frontier(compiled, cost, points, cap, extra)
    else:
        plans = _ilp_frontier(compiled, cost, points, cap, extra, backend)
    return Frontier(cost=cost, points=_non_dominated(plans, (cost,)))


def _grid(lo: float, hi: float, cap: float, points: int) -> np.ndarray:
    hi = min(hi, cap)
    if points == 1 or hi <= lo:
        return np.array([hi if points == 1 else lo])
    return np.linspace(lo, hi, points)


def _lattice_frontier(compiled: CompiledProblem, cost: str, points: int, cap: float) -> list[Plan] | None:
    """Every grid point from one DP pass over the cost lattice; None when the DP does not apply
    (costs off a lattice, too many levels) so the caller falls back to the per-budget search."""
    started = time.perf_counter()
    c = compiled.cost(cost)
    lo = compiled.minimum(cost)
    if cap < lo:
        check_reachable(compiled, {cost: cap})
    ks = Knapsack(c, compiled.damage, compiled.valid)
    rows = np.arange(compiled.n_groups)
    hull = ks.root_hull
    hi = float(ks.cost[rows, hull.vertices[rows, hull.n_steps]].sum())
    budgets = _grid(lo, hi, cap, points)
    choices = lattice_choices(compiled, cost, budgets, ks)
    if choices is None:
        return None
    seconds = (time.perf_counter() - started) / len(budgets)
    tol = objective_tolerance(compiled.damage, compiled.valid)
    return [compiled.plan(ch, backend="dp", started=time.perf_counter() - seconds, tolerance=_rel(tol, ch, compiled)) for ch in choices]


def _rel(abs_tol: float, choice: np.ndarray, compiled: CompiledProblem) -> float:
    damage = compiled.totals(choice)[0]
    return abs_tol / max(abs(damage), abs_tol, 1e-300)


def lattice_choices(
    compiled: CompiledProblem, cost: str, budgets: np.ndarray, ks: Knapsack
) -> list[np.ndarray] | None:
    """The one-budget optimum at each of `budgets` from one DP pass over the cost lattice; None when
    the DP does not apply (costs off a lattice, too many levels)."""
    c = compiled.cost(cost)
    keep = _lattice.undominated(c, compiled.damage, compiled.valid)
    lat = _lattice.find_lattice(c, keep)
    if lat is None or not _lattice.affordable(lat.levels, lat.top):
        return None
    table = _lattice.run(lat.levels, compiled.damage, lat.top)
    tops = np.array([min(lat.level_of(float(b)), lat.top) for b in budgets])
    levels = table.best_levels(tops)
    if (levels < 0).any():
        return None
    rows = np.arange(compiled.n_groups)
    out = []
    for budget, choice in zip(budgets, table.backtrack(levels)):
        if not fits(float(c[rows, choice].sum()), float(budget)):  # rounding at a level's edge
            choice = ks.solve(float(budget)).choice
        out.append(choice)
    return out


def _knapsack_frontier(compiled: CompiledProblem, cost: str, points: int, cap: float) -> list[Plan]:
    started = time.perf_counter()
    ks = Knapsack(compiled.cost(cost), compiled.damage, compiled.valid)
    lo = ks.minimum_cost()
    if cap < lo:
        check_reachable(compiled, {cost: cap})
    rows = np.arange(compiled.n_groups)
    hull = ks.root_hull
    dearest = hull.vertices[rows, hull.n_steps]
    hi = float(ks.cost[rows, dearest].sum())
    plans, prev = [], None
    tol = objective_tolerance(compiled.damage, compiled.valid)
    for budget in _grid(lo, hi, cap, points):
        out = ks.solve(float(budget), start=prev)
        prev = out.choice
        plans.append(compiled.plan(out.choice, backend="mckp", started=started, tolerance=_rel(tol, out.choice, compiled)))
        started = time.perf_counter()
    return plans


def _two_frontier(
    compiled: CompiledProblem, cost: str, points: int, cap: float, extra: dict[str, float]
) -> list[Plan]:
    """Frontier on `cost` under one extra budget by the exact two-budget knapsack, one shared
    instance (its one-budget hulls serve every point). Where the extra budget does not bind, the
    one-budget optimum is the answer: for costs on a lattice one DP pass gives those for every
    point. Elsewhere each point is solved warm-started from its neighbour's plan (the grid grows,
    so the previous optimum still fits) and its multiplier."""
    started = time.perf_counter()
    (other, limit), = extra.items()
    check_reachable(compiled, {**extra, **({cost: cap} if np.isfinite(cap) else {})})
    c, o = compiled.cost(cost), compiled.cost(other)
    # Ends of the grid: the cheapest plan meeting the extra budget, and the least-damage one.
    cheapest = Knapsack(o, c, compiled.valid).solve(limit)
    best = Knapsack(o, compiled.damage, compiled.valid).solve(limit)
    if cheapest.choice is None or best.choice is None:
        raise InfeasibleBudget(
            "the extra budgets cannot all be met together", minimums={other: compiled.minimum(other)}, violated=()
        )
    lo = compiled.totals(cheapest.choice)[1][cost]
    hi = compiled.totals(best.choice)[1][cost]
    budgets = _grid(lo, hi, cap, points)
    two = TwoBudget(c, o, compiled.damage, compiled.valid)
    free = lattice_choices(compiled, cost, budgets, two.ka) or [None] * len(budgets)
    tol = objective_tolerance(compiled.damage, compiled.valid)
    rows = np.arange(compiled.n_groups)
    plans, prev, hint = [], cheapest.choice, None
    for budget, alone in zip(budgets, free):
        if alone is not None and fits(float(o[rows, alone].sum()), limit):
            choice = alone
        else:
            out = two.solve(float(budget), limit, start=prev, hint=hint)
            if out.status == "infeasible":
                started = time.perf_counter()
                continue
            if out.status != "optimal":  # the core search gave up: the general path, checked
                plans.append(solve_compiled(compiled, {**extra, cost: float(budget)}, start=prev))
                prev = compiled.choice_of(plans[-1])
                started = time.perf_counter()
                continue
            choice, hint = out.choice, two.last_mu or hint
        prev = choice
        tolerance = _rel(tol, choice, compiled)
        plans.append(compiled.plan(choice, backend="mckp2", started=started, tolerance=tolerance))
        started = time.perf_counter()
    return plans


def _ilp_frontier(
    compiled: CompiledProblem, cost: str, points: int, cap: float, extra: dict[str, float], backend: str
) -> list[Plan]:
    check_reachable(compiled, {**extra, **({cost: cap} if np.isfinite(cap) else {})})
    n_budgets = len(extra) + 1
    impl = auto_backend(n_budgets, general=True) if backend == "auto" else get_backend(backend, n_budgets)
    # Ends of the grid: the cheapest plan meeting the extra budgets, and the least-damage one.
    cheapest = impl.solve(compiled, compiled.cost(cost), extra)
    if cheapest.choice is None:
        raise InfeasibleBudget(
            "the extra budgets cannot all be met together",
            minimums={n: compiled.minimum(n) for n in extra},
            violated=(),
        )
    lo = compiled.totals(cheapest.choice)[1][cost]
    best = solve_compiled(compiled, extra, backend=impl.name if extra else backend)
    hi = best.costs[cost]
    plans, prev = [], cheapest.choice
    for budget in _grid(lo, hi, cap, points):
        plan = solve_compiled(compiled, {**extra, cost: float(budget)}, backend=impl.name, start=prev)
        prev = compiled.choice_of(plan)
        plans.append(plan)
    return plans


def _non_dominated(plans: Sequence[Plan], costs: Sequence[str]) -> list[Plan]:
    """Drop duplicates and plans some other plan beats or equals in damage and every cost."""

    def key(p: Plan) -> tuple[float, ...]:
        return (*(p.costs[c] for c in costs), p.damage)

    ordered = sorted(plans, key=key)
    kept: list[Plan] = []
    for plan in ordered:
        k = key(plan)
        tol = [_SAME_REL * max(1.0, abs(x)) for x in k]
        if any(all(q <= x + t for q, x, t in zip(key(other), k, tol)) for other in kept):
            continue
        kept.append(plan)
    return kept


def lower_convex_hull(problem: Problem, cost: str = "bytes") -> list[Plan]:
    """Every vertex of the lower convex hull of (cost, damage) over all plans, cheapest first: the
    plans minimising damage + λ·cost as λ sweeps from +∞ to 0. Each is optimal for its own cost."""
    started = time.perf_counter()
    compiled = compile_problem(problem)
    ks = Knapsack(compiled.cost(cost), compiled.damage, compiled.valid)
    hull = ks.root_hull
    choice = hull.base.copy()
    steps = np.zeros(compiled.n_groups, dtype=np.intp)
    plans = [compiled.plan(choice, backend="lagrangian", started=started)]
    eff = hull.eff
    breaks = np.flatnonzero(np.r_[eff[1:] != eff[:-1], True]) if eff.size else np.empty(0, dtype=np.intp)
    begin = 0
    for end in breaks + 1:
        rows = hull.row[begin:end]
        np.add.at(steps, rows, 1)
        choice[rows] = hull.vertices[rows, steps[rows]]
        begin = end
        started_point = time.perf_counter()
        plans.append(compiled.plan(choice, backend="lagrangian", started=started_point))
    return plans


def frontier_2d(
    problem: Problem,
    costs: tuple[str, str] = ("bytes", "latency_ms"),
    grid: tuple[int, int] = (10, 10),
    *,
    budgets: Sequence[Budget] = (),
    backend: str = "auto",
) -> Frontier2D:
    """Exact plans on an n × m grid of limits on two costs (each from its least achievable value to
    its value in the least-damage plan); infeasible cells skipped, dominated plans dropped. With no
    extra budget ("auto" or "mckp2") every cell is the exact two-budget knapsack's, one shared
    instance, warm-started along each row."""
    n, m = grid
    if n < 1 or m < 1:
        raise ValueError(f"grid must be two positive counts, got {grid}")
    if costs[0] == costs[1]:
        raise ValueError("frontier_2d needs two different costs")
    compiled = compile_problem(problem)
    extra = limits_of(compiled, [b for b in budgets if b.cost not in costs])
    best = solve_compiled(compiled, extra, backend=backend)
    axes = []
    for c in costs:
        cap = min((b.limit for b in budgets if b.cost == c), default=np.inf)
        axes.append(_grid(compiled.minimum(c), best.costs[c], cap, n if c == costs[0] else m))
    name = backend if backend == "auto" else get_backend(backend, len(extra) + 2).name
    # No extra budget: one shared two-budget knapsack (its one-budget hulls serve every cell).
    two = TwoBudget(compiled.cost(costs[0]), compiled.cost(costs[1]), compiled.damage, compiled.valid)
    shared = not extra and name in ("auto", "mckp2")
    tol = objective_tolerance(compiled.damage, compiled.valid)
    plans: list[Plan] = []
    for a in axes[0]:
        prev, hint = None, None
        for b in axes[1]:  # tightest first: each plan is a feasible warm start for the next cell
            started = time.perf_counter()
            if shared:
                out = two.solve(float(a), float(b), start=prev, hint=hint)
                if out.status == "infeasible":
                    continue
                if out.status == "optimal":
                    hint = two.last_mu or hint
                    prev = out.choice
                    plans.append(compiled.plan(out.choice, backend="mckp2", started=started, tolerance=_rel(tol, out.choice, compiled)))
                    continue
            try:
                plan = solve_compiled(
                    compiled, {**extra, costs[0]: float(a), costs[1]: float(b)}, backend=name, start=prev
                )
            except InfeasibleBudget:
                continue
            prev = compiled.choice_of(plan)
            plans.append(plan)
    return Frontier2D(costs=costs, points=_non_dominated(plans, costs))
