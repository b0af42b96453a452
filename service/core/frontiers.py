"""Frontiers as the API stores and serves them: compact, self-describing, ready to draw.

Each point carries its whole plan as one small integer per unit (an index into `candidates`), so a
200-point frontier of a 500-layer model stays a few hundred kilobytes and a click on a point in the
dashboard needs no second request. `unit_layers` (aligned with `units`) names the layers each unit's
choice applies to: with grouping "block" a unit is a whole block (workers.table.unit_layers).
"""

from __future__ import annotations

import time
from typing import Any

from solver import Plan, Problem, frontier, greedy_plan, lower_convex_hull, uniform_plans
from solver.problem import Budget
from workers.table import unit_layers


def _candidates(problem: Problem) -> list[str]:
    seen: dict[str, None] = {}
    for unit in problem.units:
        for opt in unit.options:
            seen.setdefault(opt.candidate, None)
    return list(seen)


def _point(problem: Problem, plan: Plan, index: dict[str, int], **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "damage": plan.damage,
        "costs": dict(plan.costs),
        "status": plan.status,
        "gap": plan.gap,
        "choices": [index[plan.assignment[u.name]] for u in problem.units],
        **extra,
    }
    if "bytes" in plan.costs and problem.total_weights > 0:
        out["average_bits"] = plan.average_bits(problem)
    return out


def _thin(plans: list[Plan], cost: str, *, limit: int) -> list[Plan]:
    """At most `limit` hull vertices, evenly spread in cost, ends kept: the hull of a 500-layer model
    has thousands of vertices, more than a chart can show and most of a response's bytes."""
    if len(plans) <= limit:
        return plans
    lo, hi = plans[0].costs[cost], plans[-1].costs[cost]
    picked, next_at, step = [], lo, (hi - lo) / (limit - 1)
    for plan in plans:
        if plan.costs[cost] >= next_at or plan is plans[-1]:
            picked.append(plan)
            next_at = plan.costs[cost] + step
    return picked


def compute_frontier(problem: Problem, *, cost: str, points: int, backend: str = "auto") -> dict[str, Any]:
    """Exact frontier over `points` budgets of `cost`, its convex hull and reference baselines."""
    started = time.perf_counter()
    cands = _candidates(problem)
    index = {c: i for i, c in enumerate(cands)}
    front = frontier(problem, cost=cost, points=points, backend=backend)
    hull = _thin(lower_convex_hull(problem, cost), cost, limit=2 * points)
    baselines = [
        _point(problem, plan, index, name=f"uniform {cand}")
        for cand, plan in sorted(uniform_plans(problem).items(), key=lambda kv: -kv[1].costs.get(cost, 0.0))
    ]
    # Greedy (HAWQ-v2 / AIMET style) at the budgets of the exact points, to show what exactness buys.
    greedy = []
    for p in front.points[:: max(1, len(front.points) // 10)]:
        try:
            plan = greedy_plan(problem, Budget(cost, p.costs[cost]))
        except Exception:  # greedy can fail to reach a budget the exact solver meets
            continue
        greedy.append(_point(problem, plan, index, name="greedy"))
    return {
        "cost": cost,
        "units": [u.name for u in problem.units],
        "unit_layers": list(
            unit_layers([u.name for u in problem.units], getattr(problem, "groups", None)).values()
        ),
        "candidates": cands,
        "points": [_point(problem, p, index) for p in front.points],
        "hull": [_point(problem, p, index) for p in hull],
        "baselines": baselines,
        "greedy": greedy,
        "solve_seconds": time.perf_counter() - started,
    }
