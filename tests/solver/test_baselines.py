"""Greedy and uniform baselines: feasible, never better than the exact plan, bounds proven."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from solver import InfeasibleBudget, greedy_plan, solve, uniform_plans
from tests.utils.solver_factories import brute_force, budgets_for, check_plan, damage_tol, problems, synthetic_llm
from hypothesis import strategies as st


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_greedy_is_feasible_and_no_better_than_exact(data):
    problem = data.draw(problems())
    (budget,) = data.draw(budgets_for(problem, ["bytes"]))
    best = brute_force(problem, [budget])
    if best is None:
        with pytest.raises(InfeasibleBudget):
            greedy_plan(problem, budget)
        return
    plan = greedy_plan(problem, budget)
    check_plan(problem, plan, [budget])
    assert plan.status == "heuristic"
    assert plan.damage >= best - damage_tol(problem)
    assert plan.bound <= best + damage_tol(problem)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=problems())
def test_uniform_plans_put_every_unit_on_one_candidate(problem):
    plans = uniform_plans(problem)
    for cand, plan in plans.items():
        assert set(plan.assignment.values()) == {cand}
        check_plan(problem, plan)
        assert plan.bound <= plan.damage + damage_tol(problem)
    common = set.intersection(*({o.candidate for o in problem.permitted(u)} for u in problem.units))
    assert set(plans) == common


def test_exact_beats_greedy_on_a_realistic_table():
    problem = synthetic_llm(200, (2, 3, 4, 5, 6, 8), seed=4)
    uni = uniform_plans(problem)
    assert set(uni) == {"int2", "int3", "int4", "int5", "int6", "int8"}
    from solver import average_bits_budget

    budget = average_bits_budget(problem, 4.125)
    exact = solve(problem, [budget])
    greedy = greedy_plan(problem, budget)
    assert exact.damage <= greedy.damage <= uni["int4"].damage
    assert uni["int4"].average_bits(problem) == pytest.approx(4.125, rel=1e-6)
    assert greedy.bound <= exact.damage * (1 + 1e-9)
