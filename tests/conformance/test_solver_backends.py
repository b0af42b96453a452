"""One conformance suite run against every registered solver back-end (skipping unavailable ones)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from solver import (
    Backend,
    BackendUnavailable,
    Budget,
    InfeasibleBudget,
    Option,
    Problem,
    Unit,
    TimeLimitReached,
    backend_names,
    get_backend,
    solve,
)
from solver.backends import BACKENDS, register
from tests.utils.solver_factories import (
    brute_force,
    budgets_for,
    check_plan,
    damage_tol,
    plans_of,
    problems,
    synthetic_llm,
)

# CBC starts a process per solve, so it gets fewer examples.
EXAMPLES = {"mckp": 150, "mckp2": 150, "dp": 150, "highs": 50, "cbc": 15}


def _available(name: str) -> None:
    state = BACKENDS.available(name)
    if not state:
        pytest.skip(f"back-end {name}: {state.reason}")


def _run(name: str, test, n: int | None = None) -> None:
    wrapped = settings(
        max_examples=n or EXAMPLES.get(name, 30),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )(given(data=st.data())(test))
    wrapped()


def _assert_optimal_or_infeasible(problem, budgets, name):
    expected = brute_force(problem, budgets)
    if expected is None:
        with pytest.raises(InfeasibleBudget) as info:
            solve(problem, budgets, backend=name)
        err = info.value
        assert set(err.minimums) == {b.cost for b in budgets}
        for cost, minimum in err.minimums.items():
            assert math.isclose(minimum, min(c[cost] for _, _, c in plans_of(problem)), rel_tol=1e-9, abs_tol=1e-12)
        return
    plan = solve(problem, budgets, backend=name)
    check_plan(problem, plan, budgets)
    assert plan.status == "optimal" and plan.gap <= plan.tolerance
    assert plan.tolerance * abs(plan.damage) <= damage_tol(problem)  # the proof's slack is tiny
    # An ILP's plan is checked by the exact knapsack methods, which replace it when they beat it.
    replaced_by = {"mckp", "mckp2"} if name in ("highs", "cbc") else set()
    assert plan.backend in {name} | replaced_by
    assert abs(plan.damage - expected) <= damage_tol(problem), (plan.damage, expected)


@pytest.mark.parametrize("name", backend_names())
def test_single_budget_matches_brute_force(name):
    _available(name)

    def test(data):
        problem = data.draw(problems())
        budgets = data.draw(budgets_for(problem, ["bytes"]))
        _assert_optimal_or_infeasible(problem, budgets, name)

    _run(name, test)


@pytest.mark.parametrize("name", backend_names())
def test_two_budgets_match_brute_force(name):
    _available(name)
    if not get_backend(name, 0).applies(2):
        pytest.skip(f"{name} takes one budget")

    def test(data):
        problem = data.draw(problems())
        budgets = data.draw(budgets_for(problem, ["bytes", "lat"]))
        _assert_optimal_or_infeasible(problem, budgets, name)

    _run(name, test)


@pytest.mark.parametrize("name", backend_names())
def test_no_budget_gives_least_damage(name):
    _available(name)

    def test(data):
        problem = data.draw(problems(max_units=4))
        plan = solve(problem, [], backend=name)
        check_plan(problem, plan)
        assert abs(plan.damage - brute_force(problem, [])) <= damage_tol(problem)

    _run(name, test, n=max(10, EXAMPLES.get(name, 30) // 3))


@pytest.mark.parametrize("name", backend_names())
def test_budget_below_minimum_is_named(name):
    _available(name)
    problem = synthetic_llm(20, (2, 4, 8))
    least = sum(min(o.costs["bytes"] for o in u.options) for u in problem.units)
    with pytest.raises(InfeasibleBudget) as info:
        solve(problem, [Budget("bytes", least - 1)], backend=name)
    assert info.value.violated == ("bytes",)
    assert info.value.minimums["bytes"] == pytest.approx(least)
    assert "bytes" in str(info.value)


@pytest.mark.parametrize("name", backend_names())
def test_time_limit_returns_plan_with_bound(name):
    _available(name)
    problem = synthetic_llm(300 if name != "cbc" else 120, (2, 3, 4, 5, 6, 8), seed=3)
    budget = Budget("latency_ms", 0.55 * sum(max(o.costs["latency_ms"] for o in u.options) for u in problem.units))
    exact = solve(problem, [budget], backend="mckp")
    try:
        plan = solve(problem, [budget], backend=name, time_limit=1e-6)
    except TimeLimitReached:
        return  # allowed: no plan found in time, and said so
    check_plan(problem, plan, [budget])
    assert plan.status in ("optimal", "time_limit")
    assert plan.bound <= exact.damage + damage_tol(problem) <= plan.damage + 2 * damage_tol(problem)
    if plan.status == "optimal":
        assert plan.damage == pytest.approx(exact.damage, rel=1e-9)
    else:
        assert plan.gap == pytest.approx((plan.damage - plan.bound) / abs(plan.damage))


def test_knapsack_stops_at_time_limit():
    """The knapsack search honours its limit once the root is done and reports an honest bound."""
    problem = synthetic_llm(2000, (2, 3, 4, 5, 6, 8), seed=1)
    budget = Budget("latency_ms", 0.5 * sum(max(o.costs["latency_ms"] for o in u.options) for u in problem.units))
    exact = solve(problem, [budget], backend="highs")
    plan = solve(problem, [budget], backend="mckp", time_limit=1e-9)
    check_plan(problem, plan, [budget])
    assert plan.status == "time_limit"
    assert plan.bound <= exact.damage * (1 + 1e-7) <= plan.damage * (1 + 2e-7)
    assert plan.gap > 0


@pytest.mark.parametrize("name", ["highs", "cbc"])
def test_budgets_jointly_infeasible_name_none(name):
    _available(name)
    opts = (Option("a", 1.0, {"bytes": 1.0, "lat": 10.0}), Option("b", 2.0, {"bytes": 10.0, "lat": 1.0}))
    problem = Problem((Unit("u", 8, opts), Unit("v", 8, opts)))
    with pytest.raises(InfeasibleBudget, match="together") as info:
        solve(problem, [Budget("bytes", 2), Budget("lat", 2)], backend=name)
    assert info.value.violated == ()
    assert info.value.minimums == {"bytes": 2.0, "lat": 2.0}


def test_unknown_backend_lists_valid_names():
    with pytest.raises(ValueError, match=r"^backend: unknown 'gurobi' \(valid: auto, cbc, dp, highs, mckp, mckp2\)$"):
        get_backend("gurobi")


def test_unknown_cost_is_a_value_error():
    with pytest.raises(ValueError, match="unknown cost 'bops'"):
        solve(synthetic_llm(3, (2, 4)), [Budget("bops", 1.0)])


def test_auto_picks_knapsack_for_up_to_two_budgets_and_ilp_for_more():
    assert get_backend("auto", 1).name == "mckp"
    assert get_backend("auto", 2).name == "mckp2"
    assert get_backend("auto", 3).name in ("highs", "cbc")
    with pytest.raises(ValueError, match="at most 1"):
        get_backend("mckp", 2)
    with pytest.raises(ValueError, match="at most 2"):
        get_backend("mckp2", 3)


def test_unavailable_backend_is_reported_not_imported():
    class Missing(Backend):
        name = "missing"

        def available(self) -> bool:
            return False

        def solve(self, compiled, objective, limits, *, time_limit=None, start=None):
            raise AssertionError("never called")

    register(Missing())
    try:
        assert "missing" in backend_names()
        assert not BACKENDS.available("missing") and BACKENDS.available("missing").reason
        with pytest.raises(BackendUnavailable, match="^backend: 'missing' is not available here") as info:
            solve(synthetic_llm(3, (2, 4)), [], backend="missing")
        assert isinstance(info.value, ValueError)
        assert get_backend("auto", 1).name == "mckp"
    finally:
        BACKENDS.unregister("missing")
    assert "missing" not in backend_names()


def test_registering_before_the_first_lookup_keeps_the_built_ins():
    """Regression: the built-ins were loaded only into an empty registry, so a back-end registered
    before the first lookup hid mckp, mckp2, dp, highs and cbc. A fresh interpreter, so nothing has
    looked a back-end up yet."""
    code = """
from solver.backends import Backend, backend_names, get_backend, register

class Custom(Backend):
    name = "custom"
    def available(self):
        return True
    def solve(self, compiled, objective, limits, *, time_limit=None, start=None):
        raise AssertionError("never called")

register(Custom())
assert backend_names() == ["cbc", "custom", "dp", "highs", "mckp", "mckp2"], backend_names()
assert get_backend("mckp").name == "mckp" and get_backend("auto", 1).name == "mckp"
assert get_backend("custom").name == "custom"
"""
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", backend_names())
def test_registered_name_resolves_to_a_backend_instance(name):
    _available(name)
    backend = get_backend(name, 0)
    assert isinstance(backend, Backend) and backend.name == name
    assert get_backend(name, 0) is backend  # one shared instance (solve keeps no state)
    assert backend.max_budgets is None or backend.max_budgets >= 1


def test_lattice_rounding_keeps_exactly_reachable_budgets():
    """Integer costs let the knapsack round the budget down to reachable totals; a budget equal to
    some plan's cost must still admit that plan."""
    problem = synthetic_llm(40, (2, 3, 4, 8), seed=5)
    rng = np.random.default_rng(0)
    for _ in range(5):
        pick = {u.name: u.options[rng.integers(len(u.options))] for u in problem.units}
        limit = sum(o.costs["bytes"] for o in pick.values())
        a = solve(problem, [Budget("bytes", limit)], backend="mckp")
        b = solve(problem, [Budget("bytes", limit)], backend="highs")
        assert a.costs["bytes"] <= limit
        assert a.damage <= b.damage * (1 + 1e-9)
        assert a.damage <= sum(o.damage for o in pick.values()) * (1 + 1e-12)
