"""Given plans (solver.given_plan): an assignment someone chose gets the table's sums and a proven bound,
and one that breaks a rule of the problem is refused naming the unit."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from solver import AssignmentError, Budget, Option, Problem, Unit, given_plan, uniform_plans
from tests.utils.solver_factories import brute_force, check_plan, damage_tol, plans_of, problems


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_permitted_assignment_gets_its_sums_and_a_bound_below_the_best_at_its_bytes(data):
    problem = data.draw(problems())
    assignment, damage, costs = data.draw(st.sampled_from(list(plans_of(problem))))
    plan = given_plan(problem, assignment)
    check_plan(problem, plan)
    assert plan.status == "given" and plan.assignment == assignment
    assert plan.damage == pytest.approx(damage) and plan.costs == pytest.approx(costs)
    best = brute_force(problem, [Budget("bytes", costs["bytes"])])
    assert plan.bound <= best + damage_tol(problem)
    assert plan.gap >= 0


def test_a_uniform_assignment_gets_uniform_plans_numbers():
    sensitivities = (10.0, 1.0, 0.1, 0.01)  # equal sizes, unequal sensitivities: bits belong to the first
    units = tuple(Unit(f"u{i}", 16, tuple(Option(f"int{b}", sens * 4.0 ** -b, {"bytes": 2 * b}) for b in (2, 4, 8)))
                  for i, sens in enumerate(sensitivities))
    problem = Problem(units)
    mine, theirs = given_plan(problem, {u.name: "int4" for u in units}), uniform_plans(problem)["int4"]
    assert (mine.damage, mine.costs, mine.bound, mine.gap) == (theirs.damage, theirs.costs, theirs.bound, theirs.gap)
    assert mine.gap > 0  # uniform is not the best plan at its bytes: the table says by how much


PROBLEM = Problem(
    tuple(Unit(name, 8, (Option("int4", 1.0, {"bytes": 4}), Option("int8", 0.1, {"bytes": 8})))
          for name in ("a", "b", "c", "d")),
    ties=(("c", "d"),), pins={"b": "int8"},
)


@pytest.mark.parametrize("assignment, unit, reason", [
    ({"a": "int4", "b": "int8", "c": "int4"}, "d", "no candidate given"),
    ({"a": "int4", "b": "int8", "c": "int4", "d": "int4", "e": "int4"}, "e", "not a unit of this analysis"),
    ({"a": "int3", "b": "int8", "c": "int4", "d": "int4"}, "a", "'int3' is not one of its permitted candidates (int4, int8)"),
    ({"a": "int4", "b": "int4", "c": "int4", "d": "int4"}, "b", "'int4' is not one of its permitted candidates (int8)"),
    ({"a": "int4", "b": "int8", "c": "int4", "d": "int8"}, "c", "tied with d"),
    ({}, None, "must map every unit"),
])
def test_an_assignment_that_breaks_a_rule_is_refused_naming_the_unit(assignment, unit, reason):
    with pytest.raises(AssignmentError) as err:
        given_plan(PROBLEM, assignment)
    assert err.value.unit == unit
    assert err.value.reason.startswith(reason)
    assert str(err.value).startswith(f"assignment.{unit}: " if unit else "assignment: ")
