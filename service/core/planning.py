"""Turning a stored analysis's problem plus a budget into a plan: solver calls and their caching.

Parsing a problem is the only per-request cost worth caching; a re-solve for a new budget then costs
only the solver's own time, so a new budget never recomputes sensitivity.

Confidence: the stored problem carries each unit's damage half-widths ("uncertainty") and the
analysis's warnings (workers.table.stored_problem). Every plan reports how sure it is
(solver.confidence: share of redrawn problems whose optimum agrees with it, the units that could
flip it; 1.0 for exact metrics) and the analysis's warnings, plus `low_confidence` when the
share is under 95%. Confidences are cached per plan: plans never change.

Units: a plan names decision units (with grouping "block" a unit is a whole block). The stored
problem carries the table's `groups` (unit → layers); `unit_choices` says, per unit, which layers
its choice applies to, by the one expansion function (workers.table.unit_layers).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from service.core.budgets import budget_field
from service.errors import InvalidInput
from solver import (
    STATUS_GIVEN, AssignmentError, Budget, BudgetError, InfeasibleBudget, Plan, Problem, budgets_from_mapping,
    explain_infeasible, given_plan, problem_from_dict, solve,
)
from solver._budget import asked_budgets
from solver.backends import available_backends, get_backend
from solver.confidence import confidence
from solver.errors import BackendUnavailable, SolverError
from workers.table import unit_layers

CONFIDENT = 0.95


@dataclass(frozen=True)
class StoredProblem(Problem):
    """An analysis's problem with what its plans report: per-unit damage half-widths, warnings and
    the layers of each unit of several (`groups`, the table's; a unit not in it is one layer)."""

    uncertainty: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    warnings: tuple[dict[str, Any], ...] = ()
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

_CACHE_SIZE = 64
_cache: OrderedDict[str, Problem] = OrderedDict()
_lock = threading.Lock()


def problem_for(analysis_id: str, problem_dict: Callable[[], dict[str, Any]]) -> Problem:
    """The parsed problem of an analysis; analyses never change once succeeded, so caching by id is
    safe. `problem_dict` is called only on a cache miss (it loads a large deferred column)."""
    with _lock:
        if analysis_id in _cache:
            _cache.move_to_end(analysis_id)
            return _cache[analysis_id]
    raw = problem_dict()
    parsed = problem_from_dict(raw)
    problem = StoredProblem(
        units=parsed.units, ties=parsed.ties, pins=parsed.pins, allowed=parsed.allowed,
        uncertainty=_uncertainty(raw.get("uncertainty")), warnings=tuple(dict(w) for w in raw.get("warnings") or []),
        groups={str(u): tuple(str(n) for n in ms) for u, ms in dict(raw.get("groups") or {}).items()},
    )
    with _lock:
        _cache[analysis_id] = problem
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return problem


def problem_of(analysis) -> Problem:
    """`problem_for` an analysis record. A problem stored before problems carried the table's
    `groups` gets them from the table (read once: the result is cached), so its block units are
    still spelled out as their layers."""

    def load() -> dict[str, Any]:
        raw = analysis.problem
        if "groups" in raw:
            return raw
        return {**raw, "groups": (analysis.table or {}).get("groups") or {}}

    return problem_for(analysis.id, load)


def unit_choices(problem: Problem, assignment: Mapping[str, str]) -> list[dict[str, Any]]:
    """A plan unit by unit, in the problem's order: {unit, candidate, damage, bytes, layers} with
    the layers the unit's candidate applies to."""
    members = unit_layers([u.name for u in problem.units], getattr(problem, "groups", None))
    out = []
    for unit in problem.units:
        cand = assignment[unit.name]
        opt = unit.option(cand)
        out.append({"unit": unit.name, "candidate": cand, "damage": opt.damage,
                    "bytes": opt.costs.get("bytes", 0.0), "layers": members[unit.name]})
    return out


class AskedBudgets(list):
    """Solver budgets that remember the words they were asked in, so an infeasible one is answered
    in those words (an avg_bits budget in bits per weight, and bytes)."""

    def __init__(self, budgets: list[Budget], asked: Mapping[str, float]):
        super().__init__(budgets)
        self.asked = dict(asked)


def budgets_from(problem: Problem, budget: dict[str, Any]) -> AskedBudgets:
    """API budget fields → solver budgets, by the solver's one budget parser (solver._budget):
    `avg_bits` (alias `average_bits`) becomes bytes; an unknown word → 422 listing the valid ones."""
    try:
        return AskedBudgets(budgets_from_mapping(budget, problem), asked_budgets(budget))
    except BudgetError as exc:  # the field says where; the reason is the solver's own words
        raise InvalidInput(budget_field(exc), exc.reason) from exc


def finite(x: float | None) -> float | None:
    """A solver number for JSON: None when absent or not finite (an unbounded bound)."""
    return float(x) if x is not None and math.isfinite(x) else None


def check_backend(name: str, n_budgets: int = 1) -> None:
    """Bad input before any solving: an unknown back-end name (the registry's message lists the valid
    ones), one not installed, or one that takes fewer budgets than given → 422 naming `backend`."""
    try:
        get_backend(name, n_budgets)
    except BackendUnavailable as exc:
        raise InvalidInput("backend", f"{exc}; installed: {', '.join(['auto', *available_backends()])}") from exc
    except ValueError as exc:
        raise InvalidInput("backend", str(exc)) from exc


def make_plan(problem: Problem, budgets: list[Budget], *, backend: str, time_limit: float | None) -> Plan:
    check_backend(backend, max(1, len(budgets)))
    try:
        return solve(problem, budgets, backend=backend, time_limit=time_limit)
    except InfeasibleBudget as exc:
        asked = getattr(budgets, "asked", None)
        if asked:
            raise explain_infeasible(exc, problem, asked) from exc
        raise
    except BackendUnavailable as exc:  # auto's hand-over to an ILP that is not installed
        raise InvalidInput("backend", str(exc)) from exc


def requested_plan(problem: Problem, *, budget: dict[str, Any] | None, assignment: Mapping[str, str] | None,
                   backend: str, time_limit: float | None) -> tuple[Plan, dict[str, Any]]:
    """The plan a POST /plans asks for and the budget it is stored under: solved under `budget`, or
    the given `assignment` (solver.given_plan) under its own bytes, what its baselines and its
    confidence-free report compare at. Exactly one of the two; 422 naming the field otherwise."""
    if (budget is None) == (assignment is None):
        both = budget is not None
        raise InvalidInput("assignment" if both else "budget", "give a budget (the solver picks the plan) or an"
                           " assignment (you pick it)" + (", not both" if both else ""))
    if assignment is None:
        return make_plan(problem, budgets_from(problem, budget), backend=backend, time_limit=time_limit), budget
    if backend != "auto" or time_limit is not None:
        raise InvalidInput("backend" if backend != "auto" else "time_limit_s",
                           "only with a budget: a given assignment is not solved")
    try:
        plan = given_plan(problem, assignment)
    except AssignmentError as exc:
        raise InvalidInput(f"assignment.{exc.unit}" if exc.unit else "assignment", exc.reason) from exc
    return plan, {"bytes": plan.costs.get("bytes", 0.0)}


def is_given(status: str) -> bool:
    return status == STATUS_GIVEN


def _uncertainty(raw: Any) -> dict[str, dict[str, float]]:
    if not isinstance(raw, Mapping):
        return {}
    return {str(u): {str(c): float(h) for c, h in dict(row).items()} for u, row in raw.items()}


_confidences: OrderedDict[str, dict[str, Any]] = OrderedDict()
_CONFIDENCE_CACHE = 4096


def plan_report(plan_id: str | None, problem: Problem, budget: dict[str, Any], assignment: Mapping[str, str],
                *, solved: bool = True) -> dict[str, Any]:
    """{"confidence": {...}, "warnings": [...]} of a plan of `problem` made under the API `budget`
    (see module docstring); cached by `plan_id` when given. A plan that was not `solved` (a given
    assignment) has no confidence: redraws agreeing with a plan nobody optimised would say nothing."""
    if not solved:
        return {"confidence": None, "warnings": [dict(w) for w in getattr(problem, "warnings", ())]}
    with _lock:
        if plan_id is not None and plan_id in _confidences:
            _confidences.move_to_end(plan_id)
            return _confidences[plan_id]
    warnings = [dict(w) for w in getattr(problem, "warnings", ())]
    uncertainty = getattr(problem, "uncertainty", None) or {}
    try:
        conf = confidence(problem, budgets_from(problem, budget), assignment, uncertainty).to_dict()
    except (SolverError, ValueError, KeyError) as exc:  # e.g. a budget a re-solve cannot meet
        conf = None
        warnings.append({"code": "confidence_unavailable", "layer": None, "values": {},
                         "message": f"plan confidence could not be computed: {exc}"})
    if conf is not None and conf["confidence"] < CONFIDENT:
        units = ", ".join(u["unit"] for u in conf["uncertain_units"][:5])
        warnings.append({
            "code": "low_confidence", "layer": None,
            "values": {"confidence": conf["confidence"], "uncertain_units": [u["unit"] for u in conf["uncertain_units"]]},
            "message": f"only {conf['confidence']:.0%} of redraws of the damage estimates agree with this plan"
                       f" (target {CONFIDENT:.0%}); the units that could flip it: {units}. More probes"
                       " (options.max_probes / max_seconds, or decide_at this budget) would settle it.",
        })
    report = {"confidence": conf, "warnings": warnings}
    if plan_id is not None:
        with _lock:
            _confidences[plan_id] = report
            while len(_confidences) > _CONFIDENCE_CACHE:
                _confidences.popitem(last=False)
    return report
