"""Turning a stored analysis's problem plus a budget into a plan: solver calls and their caching.

Parsing a problem is the only per-request cost worth caching; a re-solve for a new budget then costs
only the solver's own time, so a new budget never recomputes sensitivity.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from service.errors import InvalidInput
from solver import Budget, Plan, Problem, average_bits_budget, problem_from_dict, solve
from solver.backends import available_backends, get_backend
from solver.errors import BackendUnavailable

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
    problem = problem_from_dict(problem_dict())
    with _lock:
        _cache[analysis_id] = problem
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return problem


def budgets_from(problem: Problem, budget: dict[str, Any]) -> list[Budget]:
    """API budget fields → solver budgets. `average_bits` becomes bytes (scale overhead included)."""
    budgets = []
    for key, value in budget.items():
        if value is None:
            continue
        if key == "average_bits":
            budgets.append(average_bits_budget(problem, float(value)))
        else:
            if key not in problem.cost_names:
                raise InvalidInput(f"budget.{key}", f"this analysis has no cost {key!r}; it has {list(problem.cost_names)}")
            budgets.append(Budget(key, float(value)))
    return budgets


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
    except BackendUnavailable as exc:  # auto's hand-over to an ILP that is not installed
        raise InvalidInput("backend", str(exc)) from exc
