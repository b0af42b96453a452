"""A plan someone chose instead of solving for one: a baseline an evaluation measured better, a refined
plan, a hand edit. It is checked against the problem's rules (every unit once, its permitted
candidates, ties) and gets the table's sums, so it is stored, evaluated and exported like a solved
plan, with a proven bound saying how far the table puts it from the best plan at its own cost."""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from solver._baselines import _bound
from solver._compiled import compile_problem
from solver.plan import Plan
from solver.problem import Problem

__all__ = ["STATUS_GIVEN", "AssignmentError", "given_plan"]

STATUS_GIVEN = "given"


class AssignmentError(ValueError):
    """`unit`: the unit it is about (None: the whole assignment); `reason` says what is wrong without
    saying where, for callers that name the field themselves (the API's `assignment.<unit>`)."""

    def __init__(self, reason: str, unit: str | None = None):
        super().__init__(f"assignment.{unit}: {reason}" if unit else f"assignment: {reason}")
        self.unit = unit
        self.reason = reason


def given_plan(problem: Problem, assignment: Mapping[str, str], *, cost: str = "bytes") -> Plan:
    """The Plan of `assignment` (unit → candidate), status "given"; its bound is the least damage
    reachable within its own `cost` (when the problem has it), so `gap` is what the table says it
    gives up. AssignmentError names the first unit that breaks a rule."""
    started = time.perf_counter()
    if not isinstance(assignment, Mapping) or not assignment:
        raise AssignmentError("must map every unit to a candidate")
    names = {u.name for u in problem.units}
    unknown = sorted(set(assignment) - names)
    if unknown:
        raise AssignmentError("not a unit of this analysis (its units are listed in its table)", unknown[0])
    for unit in problem.units:
        if unit.name not in assignment:
            raise AssignmentError("no candidate given; every unit needs one", unit.name)
        chosen = assignment[unit.name]
        permitted = [o.candidate for o in problem.permitted(unit)]
        if chosen not in permitted:
            raise AssignmentError(f"{chosen!r} is not one of its permitted candidates ({', '.join(permitted)})",
                                  unit.name)
    for group in problem.ties:
        taken = sorted({assignment[name] for name in group})
        if len(taken) > 1:
            raise AssignmentError(f"tied with {', '.join(n for n in group[1:])}: they share one weight and take one"
                                  f" candidate, got {', '.join(taken)}", group[0])
    compiled = compile_problem(problem)
    units = problem.units
    choice = np.array([cands.index(assignment[units[members[0]].name])
                       for members, cands in zip(compiled.members, compiled.candidates, strict=True)], dtype=np.intp)
    _, totals = compiled.totals(choice)
    bound = (_bound(compiled, cost, totals[cost]) if cost in compiled.costs
             else float(compiled.damage.min(axis=1).sum()))
    return compiled.plan(choice, backend=STATUS_GIVEN, started=started, status=STATUS_GIVEN, bound=bound)
