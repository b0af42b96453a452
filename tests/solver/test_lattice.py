"""The exact DP methods behind the knapsack: lattice DP (every budget at once) and the Pareto-state
core DP for float costs, each against brute force, including degenerate tables (many equal costs)."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis import assume

from solver import Budget, Option, Problem, Unit, frontier, problem_from_dict, solve
from solver._compiled import compile_problem
from solver.backends import _lattice, _mckp, _pareto
from solver.backends._mckp import Knapsack, _Hull
from solver.errors import ProblemError
from tests.utils.solver_factories import brute_force, check_plan, damage_tol, plans_of, problems
from tests.utils.synthetic import problem_dict

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def degenerate(draw, *, max_units: int = 6, float_costs: bool = False) -> Problem:
    """Units drawn from two or three 'layer sizes' sharing one cost row each (many equal totals),
    damages tiny integers (many equal damages too); with float_costs the shared rows are arbitrary
    floats, on no lattice."""
    n_cands = draw(st.integers(1, 4))
    cands = [f"c{j}" for j in range(n_cands)]
    if float_costs:
        # costs within the solver's 1e-10 budget slack of each other are a separate matter (tested
        # with the back-ends); here they are either equal or well apart
        cost_val = st.one_of(st.just(0.0), st.floats(1e-3, 10.0, allow_nan=False, allow_infinity=False))
    else:
        scale = draw(st.sampled_from([1.0, 32.0, 0.37, 1e-6]))
        cost_val = st.integers(0, 6).map(lambda k: k * scale)
    rows = draw(st.lists(st.lists(cost_val, min_size=n_cands, max_size=n_cands), min_size=1, max_size=3))
    n = draw(st.integers(1, max_units))
    units = []
    for i in range(n):
        row = draw(st.sampled_from(rows))
        opts = tuple(Option(c, float(draw(st.integers(-2, 8))), {"bytes": row[j]}) for j, c in enumerate(cands))
        units.append(Unit(f"u{i}", 8, opts))
    ties, pins = [], {}
    if n > 2 and draw(st.booleans()):
        ties.append(("u0", "u1"))
    if draw(st.booleans()):
        pins[f"u{n - 1}"] = draw(st.sampled_from(cands))
    try:
        problem = Problem(tuple(units), ties=tuple(ties), pins=pins)
        compile_problem(problem)
    except ProblemError:
        assume(False)
    return problem


def _every_budget(problem: Problem) -> list[float]:
    return sorted({c["bytes"] for _, _, c in plans_of(problem)})


@FAST
@given(problem=st.one_of(degenerate(), problems(costs=("bytes",))))
def test_dp_table_gives_every_budget_optimum(problem):
    """One DP pass: the prefix minimum at each plan total's level equals brute force there."""
    compiled = compile_problem(problem)
    cost = compiled.cost("bytes")
    keep = _lattice.undominated(cost, compiled.damage, compiled.valid)
    lat = _lattice.find_lattice(cost, keep)
    assert lat is not None  # integer multiples of one scale always lie on a lattice
    table = _lattice.run(lat.levels, compiled.damage, lat.top)
    budgets = _every_budget(problem)
    ks = table.best_levels(np.array([lat.level_of(b) for b in budgets]))
    choices = table.backtrack(ks)
    rows = np.arange(compiled.n_groups)
    for budget, choice in zip(budgets, choices):
        assert compiled.valid[rows, choice].all()
        got, costs = compiled.totals(choice)
        assert costs["bytes"] <= budget * (1 + 1e-10) + 1e-300
        assert abs(got - brute_force(problem, [Budget("bytes", budget)])) <= damage_tol(problem)


@FAST
@given(problem=st.one_of(degenerate(), degenerate(float_costs=True), problems(costs=("bytes",))), points=st.integers(1, 9))
def test_dp_frontier_equals_per_budget_exact_solves(problem, points):
    """The lattice-DP frontier (auto/dp) and the per-budget knapsack frontier (mckp) both give, at
    each point, the brute-force optimum for that point's own cost; and the same damages."""
    fronts = {b: frontier(problem, "bytes", points, backend=b) for b in ("auto", "dp", "mckp")}
    for name, front in fronts.items():
        for plan in front.points:
            budget = [Budget("bytes", plan.costs["bytes"])]
            check_plan(problem, plan, budget)
            assert plan.status == "optimal" and plan.gap == 0
            assert abs(plan.damage - brute_force(problem, budget)) <= damage_tol(problem), name
    ref = [p.damage for p in fronts["mckp"].points]
    for name in ("auto", "dp"):
        got = [p.damage for p in fronts[name].points]
        assert len(got) == len(ref) and all(abs(a - b) <= damage_tol(problem) for a, b in zip(got, ref)), name


@FAST
@given(problem=st.one_of(degenerate(), degenerate(float_costs=True), problems(costs=("bytes",))), data=st.data())
def test_core_methods_match_brute_force(problem, data):
    """The two core solvers the B&B calls at its root, run on the whole problem at any budget."""
    compiled = compile_problem(problem)
    cost, dmg, valid = compiled.cost("bytes"), compiled.damage, compiled.valid
    values = _every_budget(problem)
    budget = data.draw(st.one_of(st.sampled_from(values), st.floats(0, max(values) * 1.2 + 1)))
    expected = brute_force(problem, [Budget("bytes", budget)])
    slack = 1e-10 * max(1.0, budget)
    rows = np.arange(compiled.n_groups)

    status, choice = _lattice.solve_budget(cost, dmg, valid, budget)
    if status == "optimal":
        assert expected is not None and abs(dmg[rows, choice].sum() - expected) <= damage_tol(problem)
    elif status == "infeasible":
        assert expected is None

    hull = _Hull(np.where(valid, cost, np.inf), np.where(valid, dmg, np.inf), valid)
    status, choice = _pareto.solve_core(cost, dmg, valid, hull, budget, slack, np.inf, 0.0)
    assert status != "unavailable"
    if expected is None:
        assert status == "none"
    else:
        assert status == "optimal" and abs(dmg[rows, choice].sum() - expected) <= damage_tol(problem)
        assert cost[rows, choice].sum() <= budget + slack
        # With the optimum as incumbent nothing strictly better exists.
        again, _ = _pareto.solve_core(cost, dmg, valid, hull, budget, slack, expected, damage_tol(problem))
        assert again == "none"


@FAST
@given(problem=st.one_of(degenerate(), degenerate(float_costs=True)), data=st.data())
def test_knapsack_with_and_without_core_dp_match_brute_force(problem, data):
    values = _every_budget(problem)
    budget = data.draw(st.sampled_from(values))
    expected = brute_force(problem, [Budget("bytes", budget)])
    compiled = compile_problem(problem)
    for core_dp in (True, False):
        out = Knapsack(compiled.cost("bytes"), compiled.damage, compiled.valid, core_dp=core_dp).solve(budget)
        assert out.status == "optimal"
        assert abs(compiled.totals(out.choice)[0] - expected) <= damage_tol(problem)


def test_lattice_detection():
    valid = np.ones((2, 3), dtype=bool)
    ints = np.array([[72.0, 104.0, 136.0], [288.0, 416.0, 544.0]])
    lat = _lattice.find_lattice(ints, valid)
    assert lat.step == 32 and lat.levels.tolist() == [[0, 1, 2], [0, 4, 8]] and lat.base == 360
    scaled = np.array([[0.37 * 3, 0.37 * 5, 0.37 * 11], [0.37 * 2, 0.37 * 4, 0.37 * 7]])
    lat = _lattice.find_lattice(scaled, valid)
    assert lat is not None and lat.levels.tolist() == [[0, 2, 8], [0, 2, 5]]
    assert lat.step == pytest.approx(0.37)
    halves = np.array([[1.0, 1.5, 4.0], [0.0, 2.0, 2.25]])
    assert _lattice.find_lattice(halves, valid).step == pytest.approx(0.25)
    assert _lattice.find_lattice(np.array([[0.0, 1.0, np.sqrt(2)], [0, 1, 2]]), valid) is None
    # dominated options never widen the range
    dmg = np.array([[3.0, 2.0, 2.0], [5.0, 5.0, 1.0]])
    keep = _lattice.undominated(ints, dmg, valid)
    assert keep.tolist() == [[True, True, False], [True, False, True]]


def test_dp_respects_memory_cap(monkeypatch):
    """Past the caps the frontier falls back to the per-budget search (same answers)."""
    problem = problem_from_dict(problem_dict(30, seed=4))
    ref = frontier(problem, "bytes", 12)
    assert ref.points[0].backend == "dp"
    monkeypatch.setattr(_lattice, "MAX_TABLE_BYTES", 10)
    capped = frontier(problem, "bytes", 12)
    assert capped.points[0].backend == "mckp"
    assert [p.damage for p in capped.points] == pytest.approx([p.damage for p in ref.points], rel=1e-9)


def _degenerate_float(units: int, seed: int = 1) -> Problem:
    d = problem_dict(units, seed=seed)
    rng = random.Random(seed + 100)
    table = {w: [rng.uniform(0.5, 1.5) * w * b * 1e-6 for b in (2, 3, 4, 6, 8)] for w in (256, 1024, 4096)}
    for u in d["units"]:
        for o, lat in zip(u["options"], table[u["weights"]]):
            o["costs"]["latency_ms"] = lat
    return problem_from_dict(d)


def test_degenerate_tables_are_fast_and_exact():
    """The issue's case: 500 layers of 3 sizes × 5 formats (many equal costs). A 200-point exact
    frontier took 480 s with branch and bound alone; the DP takes well under a second. Float
    latencies on no lattice go through the core Pareto DP. Spot-checked against HiGHS."""
    problem = _degenerate_float(500)
    t = time.perf_counter()
    front = frontier(problem, "bytes", 200)
    assert time.perf_counter() - t < 5.0
    assert len(front.points) == 200 and all(p.status == "optimal" and p.backend == "dp" for p in front.points)
    t = time.perf_counter()
    lat_front = frontier(problem, "latency_ms", 20)
    assert time.perf_counter() - t < 5.0
    for cost, front_ in (("bytes", front), ("latency_ms", lat_front)):
        for plan in front_.points[:: max(1, len(front_.points) // 3)]:
            ref = solve(problem, [Budget(cost, plan.costs[cost])], backend="highs")
            assert plan.damage == pytest.approx(ref.damage, rel=1e-7)
    mid = 0.5 * (front.points[0].costs["bytes"] + front.points[-1].costs["bytes"])
    t = time.perf_counter()
    one = solve(problem, [Budget("bytes", mid)])
    assert time.perf_counter() - t < 1.0 and one.status == "optimal"
    assert one.damage == pytest.approx(solve(problem, [Budget("bytes", mid)], backend="dp").damage, rel=1e-12)
    assert one.damage == pytest.approx(solve(problem, [Budget("bytes", mid)], backend="highs").damage, rel=1e-7)
