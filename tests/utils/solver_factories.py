"""Small random problems (hypothesis), brute force, and plan checks for the solver tests."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

from hypothesis import assume
from hypothesis import strategies as st

from solver import Budget, Option, Plan, Problem, Unit
from solver._compiled import compile_problem
from solver.errors import ProblemError
from tests.utils.llm_tables import synthetic_llm  # noqa: F401 - re-exported for the tests

SCALES = (1.0, 0.37, 1e-6, 3.3e5)
FEAS_REL = 1e-10


def fits(total: float, limit: float) -> bool:
    """The solver's budget semantics: ≤ up to a relative 1e-10 (float sums differ by order)."""
    return total <= limit + FEAS_REL * max(1.0, abs(limit))


@st.composite
def problems(
    draw,
    *,
    max_units: int = 5,
    max_cands: int = 4,
    costs: Sequence[str] = ("bytes", "lat"),
    constraints: bool = True,
) -> Problem:
    """Problems with up to max_units × max_cands options, integer-valued damage/costs times a scale
    (so exact ties and lattice budgets happen), and random ties, pins and allowed subsets."""
    scale = draw(st.sampled_from(SCALES))
    pool = [f"c{i}" for i in range(max_cands)]
    n = draw(st.integers(1, max_units))
    units = []
    for i in range(n):
        cands = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=max_cands, unique=True))
        opts = tuple(
            Option(
                c,
                draw(st.integers(-5, 60)) * scale,
                {k: draw(st.integers(0, 12)) * scale for k in costs},
            )
            for c in cands
        )
        units.append(Unit(f"u{i}", draw(st.integers(0, 4096)), opts))
    names = [u.name for u in units]
    ties: list[tuple[str, ...]] = []
    pins: dict[str, str] = {}
    allowed: dict[str, frozenset[str]] = {}
    if constraints and n > 1:
        for _ in range(draw(st.integers(0, 2))):
            ties.append(tuple(draw(st.lists(st.sampled_from(names), min_size=2, max_size=3, unique=True))))
    if constraints:
        for unit in units:
            kind = draw(st.sampled_from(["free", "free", "pin", "allowed"]))
            cands = [o.candidate for o in unit.options]
            if kind == "pin":
                pins[unit.name] = draw(st.sampled_from(cands))
            elif kind == "allowed":
                allowed[unit.name] = frozenset(draw(st.lists(st.sampled_from(cands), min_size=1, unique=True)))
    try:
        problem = Problem(tuple(units), ties=tuple(ties), pins=pins, allowed=allowed)
        compile_problem(problem)
    except ProblemError:
        assume(False)
    return problem


def plans_of(problem: Problem):
    """Every assignment that respects ties, pins and allowed subsets: (assignment, damage, costs)."""
    names = problem.cost_names
    choices = [problem.permitted(u) for u in problem.units]
    for combo in itertools.product(*choices):
        assignment = {u.name: o.candidate for u, o in zip(problem.units, combo)}
        if any(len({assignment[n] for n in group}) > 1 for group in problem.ties):
            continue
        damage = sum(o.damage for o in combo)
        costs = {k: sum(o.costs.get(k, 0.0) for o in combo) for k in names}
        yield assignment, damage, costs


def brute_force(problem: Problem, budgets: Sequence[Budget]) -> float | None:
    """Least damage over all plans meeting the budgets, or None when none does."""
    best = None
    for _, damage, costs in plans_of(problem):
        if all(fits(costs[b.cost], b.limit) for b in budgets):
            best = damage if best is None else min(best, damage)
    return best


def damage_tol(problem: Problem) -> float:
    scale = sum(max(abs(o.damage) for o in u.options) for u in problem.units)
    return 1e-9 * max(scale, 1e-300)


def check_plan(problem: Problem, plan: Plan, budgets: Sequence[Budget] = ()) -> None:
    """Every unit assigned a permitted candidate, ties equal, totals right, budgets met."""
    assert set(plan.assignment) == {u.name for u in problem.units}
    for unit in problem.units:
        assert plan.assignment[unit.name] in {o.candidate for o in problem.permitted(unit)}
    for group in problem.ties:
        assert len({plan.assignment[n] for n in group}) == 1, group
    opts = [u.option(plan.assignment[u.name]) for u in problem.units]
    assert math.isclose(plan.damage, sum(o.damage for o in opts), rel_tol=1e-9, abs_tol=damage_tol(problem))
    for name in problem.cost_names:
        total = sum(o.costs.get(name, 0.0) for o in opts)
        assert math.isclose(plan.costs[name], total, rel_tol=1e-9, abs_tol=1e-12)
    for b in budgets:
        assert fits(plan.costs[b.cost], b.limit), (b, plan.costs)
    assert plan.bound <= plan.damage + damage_tol(problem)


@st.composite
def budgets_for(draw, problem: Problem, costs: Sequence[str] = ("bytes",)) -> list[Budget]:
    """Limits between just below the cheapest and above the dearest plan, sometimes exactly the cost
    of some plan (where rounding matters most)."""
    plans = list(plans_of(problem))
    out = []
    for name in costs:
        values = [c[name] for _, _, c in plans]
        lo, hi = min(values), max(values)
        span = (hi - lo) or max(abs(hi), 1e-12)
        where = draw(st.sampled_from(["exact", "exact", "between", "between", "below", "above"]))
        if where == "exact":
            limit = draw(st.sampled_from(values))
        elif where == "between":
            limit = lo + draw(st.floats(0, 1)) * span
        elif where == "below":
            limit = lo - draw(st.floats(1e-3, 0.5)) * span
        else:
            limit = hi + draw(st.floats(0, 1)) * span
        out.append(Budget(name, max(0.0, limit)))
    return out


def limits_dict(budgets: Sequence[Budget]) -> Mapping[str, float]:
    return {b.cost: b.limit for b in budgets}
