"""Two budgets: the exact two-budget knapsack (mckp2), and every ILP's "optimal" checked by it.

Issue 16: on a Llama-70B-shaped table (560 units × 8 candidates) with bytes and latency budgets,
the latency limit not binding, HiGHS returned a plan 2e-7 worse than the one-budget optimum and
called it optimal with gap 0.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from solver import Budget, Option, Problem, Unit, average_bits_budget, frontier, frontier_2d, solve
from solver._compiled import compile_problem
from solver.backends import BACKENDS, _two, get_backend, register
from solver.backends._two import TwoBudget, _core, _undominated3
from solver.backends.base import Backend, Outcome
from tests.utils.llm_tables import LLAMA70B_BITS, scaled, synthetic_llm
from tests.utils.solver_factories import brute_force, budgets_for, check_plan, damage_tol, problems

MEDIUM = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def _llama_case(factor: float = 1.0):
    problem = scaled(synthetic_llm(560, LLAMA70B_BITS, seed=0), factor)
    size = average_bits_budget(problem, 5.5)
    alone = solve(problem, [size], backend="mckp")
    latency = Budget("latency_ms", 1.05 * alone.costs["latency_ms"])  # does not bind
    return problem, size, latency, alone


@pytest.mark.parametrize("factor", [1.0, 1.1e5])
def test_non_binding_second_budget_gives_the_one_budget_optimum(factor):
    problem, size, latency, alone = _llama_case(factor)
    for backend in ("highs", "auto", "mckp2"):
        plan = solve(problem, [size, latency], backend=backend)
        check_plan(problem, plan, [size, latency])
        assert plan.status == "optimal"
        assert plan.gap <= plan.tolerance <= 1e-9
        assert plan.damage <= alone.damage * (1 + 1e-12), (backend, plan.damage, alone.damage)


@pytest.mark.parametrize("name", ["highs", "cbc"])
def test_ilp_objective_scaled_to_the_optimum_finds_it_unchecked(name):
    """The ILP layout divides the objective by the LP bound of its optimum, not by the largest
    column, so the solver's absolute tolerances no longer let the 2e-7-worse plan through."""
    problem, size, latency, alone = _llama_case()
    compiled = compile_problem(problem)
    out = get_backend(name, 2).solve(compiled, compiled.damage, {"bytes": size.limit, "latency_ms": latency.limit})
    assert out.status == "optimal"
    assert compiled.totals(out.choice)[0] <= alone.damage * (1 + 1e-12)


class _Liar(Backend):
    """Claims "optimal" for a plan that meets the budgets but is not the best one."""

    name = "liar"

    def available(self) -> bool:
        return True

    def solve(self, compiled, objective, limits, *, time_limit=None, start=None):
        rows = np.arange(compiled.n_groups)
        cheapest = np.argmin(np.where(compiled.valid, sum(compiled.cost(n) for n in limits), np.inf), axis=1)
        return Outcome(cheapest, "optimal", float(objective[rows, cheapest].sum()))


@pytest.mark.parametrize("n_budgets", [1, 2])
def test_a_wrong_optimal_claim_is_caught_and_replaced(n_budgets):
    problem = synthetic_llm(40, (2, 3, 4, 8), seed=4)
    budgets = [average_bits_budget(problem, 5.0), Budget("latency_ms", 1e9)][:n_budgets]
    exact = solve(problem, budgets, backend="mckp2")
    register(_Liar())
    try:
        plan = solve(problem, budgets, backend="liar")
    finally:
        BACKENDS.unregister("liar")
    assert plan.backend == ("mckp" if n_budgets == 1 else "mckp2")
    assert plan.status == "optimal"
    assert plan.damage == pytest.approx(exact.damage, rel=1e-12)


def test_three_budgets_checked_by_pairs():
    """A third budget that does not bind: the pair relaxation's optimum meets it, so it is the
    answer and the ILP's plan is confirmed (or replaced) by it."""
    problem = synthetic_llm(60, (2, 4, 8), seed=6)
    opts = [u.options for u in problem.units]
    units = tuple(
        Unit(u.name, u.weights, tuple(Option(o.candidate, o.damage, {**o.costs, "power": 1.0}) for o in os))
        for u, os in zip(problem.units, opts)
    )
    problem = Problem(units)
    two = [average_bits_budget(problem, 4.0), Budget("latency_ms", 0.9 * solve(problem, [average_bits_budget(problem, 4.0)]).costs["latency_ms"])]
    exact = solve(problem, two, backend="mckp2")
    plan = solve(problem, [*two, Budget("power", 60.0)], backend="highs")
    assert plan.status == "optimal"
    assert plan.damage == pytest.approx(exact.damage, rel=1e-12)


@MEDIUM
@given(
    problem=problems(max_units=7, max_cands=4, constraints=False),
    data=st.data(),
    beams=st.sampled_from([(None,), (1, None), (1, 3, None), _two.BEAMS]),
)
def test_medium_problems_with_both_budgets_binding(problem, data, beams):
    """Neither budget alone gives a plan meeting the other, so the search gets past the one-budget
    shortcut into the LP bound, the beam passes (narrow ones cut, forcing the exact pass) and the
    core DP."""
    budgets = data.draw(budgets_for(problem, ["bytes", "lat"]))
    expected = brute_force(problem, budgets)
    assume(expected is not None)
    for one in budgets:
        alone = solve(problem, [one], backend="mckp")
        assume(any(alone.costs[b.cost] > b.limit * (1 + 1e-9) + 1e-12 for b in budgets))
    old, _two.BEAMS = _two.BEAMS, beams
    try:
        plan = solve(problem, budgets, backend="mckp2")
    finally:
        _two.BEAMS = old
    check_plan(problem, plan, budgets)
    assert plan.status == "optimal"
    assert abs(plan.damage - expected) <= damage_tol(problem)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=40)
)
def test_dominance_filter_keeps_every_undominated_state(states):
    a, b, d = (np.array(col, dtype=float) for col in zip(*states))
    kept = set(_undominated3(a, b, d).tolist())
    for i in range(a.size):
        dominated = any(
            j != i and a[j] <= a[i] and b[j] <= b[i] and d[j] <= d[i] and (j in kept or (a[j], b[j], d[j]) != (a[i], b[i], d[i]))
            for j in range(a.size)
        )
        if not dominated:
            assert i in kept
    # of identical states one stays
    assert {(a[i], b[i], d[i]) for i in kept} >= {
        t for t in zip(a, b, d) if not any(all(x <= y for x, y in zip(u, t)) and u != t for u in zip(a, b, d))
    }


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=problems(max_units=6, max_cands=3, constraints=False), data=st.data())
def test_core_dp_alone_is_exact(problem, data):
    """The core DP with no incumbent and no multipliers (rc all zero) is a plain exact search."""
    budgets = data.draw(budgets_for(problem, ["bytes", "lat"]))
    compiled = compile_problem(problem)
    ca, cb = compiled.cost("bytes"), compiled.cost("lat")
    valid = compiled.valid
    inf = lambda x: np.where(valid, x, np.inf)
    a, b = budgets[0].limit, budgets[1].limit
    status, choice = _core(inf(ca), inf(cb), inf(compiled.damage), valid, np.zeros(valid.shape), a, b,
                           1e-10 * max(1, a), 1e-10 * max(1, b), np.inf, 0.0, None)  # fmt: skip
    expected = brute_force(problem, budgets)
    if expected is None:
        assert status == "none"
        return
    assert status == "optimal"
    rows = np.arange(compiled.n_groups)
    assert abs(float(compiled.damage[rows, choice].sum()) - expected) <= damage_tol(problem)


def test_two_budget_frontier_matches_per_point_solves():
    problem = synthetic_llm(80, (2, 3, 4, 6, 8), seed=2)
    lat = Budget("latency_ms", 0.6 * solve(problem, []).costs["latency_ms"])
    front = frontier(problem, "bytes", 15, budgets=[lat])
    assert len(front.points) >= 8
    assert {p.backend for p in front.points} <= {"dp", "mckp", "mckp2"}
    binding = 0
    for plan in front.points:
        budgets = [Budget("bytes", plan.costs["bytes"]), lat]
        ref = solve(problem, budgets, backend="highs")
        assert plan.status == "optimal" and plan.tolerance <= 1e-8  # 1e-12 of Σ max damage, relative
        assert plan.damage == pytest.approx(ref.damage, rel=1e-10)
        binding += plan.costs["latency_ms"] > 0.999 * lat.limit
    assert 2 <= binding < len(front.points)  # the extra budget binds on part of this frontier


def test_frontier_2d_uses_the_two_budget_knapsack():
    problem = synthetic_llm(30, (2, 4, 8), seed=3)
    front = frontier_2d(problem, ("bytes", "latency_ms"), (4, 4))
    assert {p.backend for p in front.points} <= {"mckp", "mckp2"}
    for plan in front.points:
        budgets = [Budget("bytes", plan.costs["bytes"]), Budget("latency_ms", plan.costs["latency_ms"])]
        ref = solve(problem, budgets, backend="highs")
        assert plan.damage == pytest.approx(ref.damage, rel=1e-10)
