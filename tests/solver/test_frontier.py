"""Frontiers: every point optimal for its own cost, none dominated; hull and 2-cost grid."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from solver import Budget, InfeasibleBudget, frontier, frontier_2d, lower_convex_hull, solve
from tests.utils.solver_factories import brute_force, check_plan, damage_tol, plans_of, problems, synthetic_llm

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _non_dominated(points, costs):
    for a in points:
        for b in points:
            if a is b:
                continue
            assert not (
                all(b.costs[c] <= a.costs[c] for c in costs) and b.damage <= a.damage
            ), f"{a.costs} {a.damage} dominated by {b.costs} {b.damage}"


@FAST
@given(problem=problems(), points=st.integers(1, 12), backend=st.sampled_from(["auto", "highs"]))
def test_frontier_points_are_optimal_and_non_dominated(problem, points, backend):
    front = frontier(problem, "bytes", points, backend=backend)
    assert 1 <= len(front.points) <= points
    costs = [p.costs["bytes"] for p in front.points]
    assert costs == sorted(costs)
    _non_dominated(front.points, ["bytes"])
    for plan in front.points:
        budget = [Budget("bytes", plan.costs["bytes"])]
        check_plan(problem, plan, budget)
        assert plan.status == "optimal"
        assert abs(plan.damage - brute_force(problem, budget)) <= damage_tol(problem)
    # The ends: the cheapest plan's cost, and the least damage of all.
    all_plans = list(plans_of(problem))
    if points > 1:
        assert front.points[0].costs["bytes"] == pytest.approx(min(c["bytes"] for _, _, c in all_plans), abs=1e-9)
    assert abs(front.points[-1].damage - min(d for _, d, _ in all_plans)) <= damage_tol(problem)


@FAST
@given(problem=problems(max_units=4), data=st.data())
def test_frontier_under_an_extra_budget(problem, data):
    lat = [c["lat"] for _, _, c in plans_of(problem)]
    extra = Budget("lat", data.draw(st.sampled_from(lat)))
    front = frontier(problem, "bytes", 6, budgets=[extra])
    _non_dominated(front.points, ["bytes"])
    for plan in front.points:
        budgets = [extra, Budget("bytes", plan.costs["bytes"])]
        check_plan(problem, plan, budgets)
        assert abs(plan.damage - brute_force(problem, budgets)) <= damage_tol(problem)


@FAST
@given(problem=problems())
def test_convex_hull_vertices_are_optimal_and_convex(problem):
    hull = lower_convex_hull(problem, "bytes")
    pts = [(p.costs["bytes"], p.damage) for p in hull]
    for plan in hull:
        check_plan(problem, plan)
        budget = [Budget("bytes", plan.costs["bytes"])]
        assert abs(plan.damage - brute_force(problem, budget)) <= damage_tol(problem)
    for (c0, d0), (c1, d1) in zip(pts, pts[1:]):
        assert c1 > c0 and d1 < d0
    slopes = [(d1 - d0) / (c1 - c0) for (c0, d0), (c1, d1) in zip(pts, pts[1:])]
    for s0, s1 in zip(slopes, slopes[1:]):
        assert s1 >= s0 - 1e-9 * max(1.0, abs(s0))
    # No plan lies below the hull.
    for _, d, c in plans_of(problem):
        for (c0, d0), (c1, d1) in zip(pts, pts[1:]):
            if c0 <= c["bytes"] <= c1:
                line = d0 + (d1 - d0) * (c["bytes"] - c0) / (c1 - c0)
                assert d >= line - damage_tol(problem)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=problems(max_units=4))
def test_frontier_2d_points_optimal_for_their_own_costs(problem):
    front = frontier_2d(problem, ("bytes", "lat"), (4, 4))
    assert front.points
    _non_dominated(front.points, ["bytes", "lat"])
    for plan in front.points:
        budgets = [Budget("bytes", plan.costs["bytes"]), Budget("lat", plan.costs["lat"])]
        check_plan(problem, plan, budgets)
        assert abs(plan.damage - brute_force(problem, budgets)) <= damage_tol(problem)


def test_frontier_matches_per_point_ilp_on_a_realistic_table():
    problem = synthetic_llm(120, (2, 3, 4, 5, 6, 8), seed=2)
    front = frontier(problem, "bytes", 25)
    assert len(front.points) >= 20
    for plan in front.points[::4]:
        ref = solve(problem, [Budget("bytes", plan.costs["bytes"])], backend="highs")
        assert plan.damage <= ref.damage * (1 + 1e-7)
        assert plan.damage >= ref.damage * (1 - 1e-6)


def test_frontier_rejects_bad_arguments():
    problem = synthetic_llm(3, (2, 4))
    with pytest.raises(ValueError, match="points"):
        frontier(problem, "bytes", 0)
    with pytest.raises(ValueError, match="unknown cost 'bops'"):
        frontier(problem, "bops", 5)
    with pytest.raises(InfeasibleBudget):
        frontier(problem, "bytes", 5, budgets=[Budget("latency_ms", 0.0)])


def test_hull_base_takes_the_best_of_equal_costs_up_to_rounding():
    """Tied units' costs are sums: 0.2 + 0.5 and 0.3 + 0.4 differ in the last bit. The hull's first
    vertex must still be the least damage at that cost (found by a random search)."""
    from solver import Option, Problem, Unit

    units = (
        Unit("u0", 1, (Option("c0", 0.0, {"bytes": 0.2}), Option("c3", 0.1, {"bytes": 0.30000000000000004}))),
        Unit("u1", 1, (Option("c2", -0.1, {"bytes": 0.30000000000000004}),)),
        Unit("u2", 1, (Option("c1", -0.5, {"bytes": 0.30000000000000004}), Option("c3", -0.4, {"bytes": 0.4}),
                       Option("c0", 0.1, {"bytes": 0.5}), Option("c2", -0.1, {"bytes": 0.6000000000000001}))),
    )
    problem = Problem(units, ties=(("u0", "u2"),))
    hull = lower_convex_hull(problem, "bytes")
    for plan in hull:
        budget = [Budget("bytes", plan.costs["bytes"])]
        assert abs(plan.damage - brute_force(problem, budget)) <= damage_tol(problem)
    assert hull[0].damage == pytest.approx(-0.4)
