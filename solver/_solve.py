"""`solve`: one exact plan under any number of budgets."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from solver._model import Model, compile_problem, limits_of
import numpy as np

from solver.backends import available_backends, get_backend
from solver.backends._mckp import Knapsack
from solver.backends.base import Outcome
from solver.backends._ilp import fits
from solver.errors import InfeasibleBudget, SolverError
from solver.plan import STATUS_OPTIMAL, STATUS_TIME_LIMIT, Plan
from solver.problem import Budget, Problem


class TimeLimitReached(SolverError):
    """The time limit ended before the back-end found any plan that meets the budgets."""


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def check_reachable(model: Model, limits: Mapping[str, float]) -> dict[str, float]:
    """Minimum of every budgeted cost; raises InfeasibleBudget naming the limits below theirs."""
    minimums = {name: model.minimum(name) for name in limits}
    violated = tuple(n for n, lim in limits.items() if not fits(minimums[n], lim))
    if violated:
        parts = "; ".join(
            f"{n} ≤ {_fmt(limits[n])} is below the least achievable {_fmt(minimums[n])}" for n in violated
        )
        raise InfeasibleBudget(
            f"budget cannot be met: {parts} (ties, pins and allowed subsets respected)",
            minimums=minimums,
            violated=violated,
        )
    return minimums


def solve_model(
    model: Model,
    limits: Mapping[str, float],
    *,
    backend: str = "auto",
    time_limit: float | None = None,
    start=None,
) -> Plan:
    """`solve` on an already compiled problem (frontiers call it many times)."""
    started = time.perf_counter()
    if time_limit is not None and not time_limit > 0:
        raise ValueError(f"time_limit must be positive seconds or None, got {time_limit}")
    impl = get_backend(backend, len(limits))
    minimums = check_reachable(model, limits)
    if backend == "auto" and impl.name == "mckp":
        out, name = _auto_single(model, limits, time_limit, start, started)
    else:
        out, name = impl.solve(model, model.damage, limits, time_limit=time_limit, start=start), impl.name
    if out.status == "infeasible":
        names = ", ".join(f"{n} ≤ {_fmt(v)}" for n, v in limits.items())
        raise InfeasibleBudget(
            f"budgets {names} cannot all be met together, though each can alone", minimums=minimums, violated=()
        )
    if out.choice is None:
        raise TimeLimitReached(f"time limit of {time_limit} s ended before {name} found a plan")
    status = STATUS_OPTIMAL if out.status == "optimal" else STATUS_TIME_LIMIT
    return model.plan(out.choice, backend=name, started=started, status=status, bound=out.bound)


AUTO_NODE_LIMIT = 50_000


def _auto_single(model: Model, limits, time_limit, start, started) -> tuple[Outcome, str]:
    """The knapsack method first; if its search grows past AUTO_NODE_LIMIT nodes (adversarial
    tables with many equal trade-offs), hand its incumbent to the general ILP as a warm start."""
    mckp = get_backend("mckp", len(limits))
    if limits:
        (name, limit), = limits.items()
        cost = model.cost(name)
    else:
        cost, limit = np.zeros(model.valid.shape), 0.0
    out = Knapsack(cost, model.damage, model.valid).solve(
        limit, time_limit=time_limit, start=start, node_limit=AUTO_NODE_LIMIT
    )
    if out.status != "incomplete":
        return out, mckp.name
    others = [n for n in ("highs", "cbc") if n in available_backends()]
    if not others:
        return Outcome(out.choice, "time_limit", out.bound), mckp.name
    left = None if time_limit is None else max(time_limit - (time.perf_counter() - started), 1e-3)
    general = get_backend(others[0], len(limits))
    ilp = general.solve(model, model.damage, limits, time_limit=left, start=out.choice)
    bound = max(out.bound, ilp.bound)
    if ilp.choice is None or (ilp.status != "optimal" and model.totals(ilp.choice)[0] > model.totals(out.choice)[0]):
        return Outcome(out.choice, "time_limit", bound), mckp.name
    return Outcome(ilp.choice, ilp.status, bound), general.name


def solve(
    problem: Problem,
    budgets: Sequence[Budget],
    *,
    backend: str = "auto",
    time_limit: float | None = None,
) -> Plan:
    """Least-damage plan meeting every budget, with ties, pins and allowed subsets respected.

    Raises InfeasibleBudget (with each budgeted cost's minimum) when no plan meets them, and
    TimeLimitReached when the limit ends before any plan is found. `backend` is a registry name
    or "auto" (the specialised knapsack for one budget, HiGHS otherwise, CBC as fallback).
    """
    if isinstance(budgets, Budget):
        budgets = [budgets]
    model = compile_problem(problem)
    return solve_model(model, limits_of(model, budgets), backend=backend, time_limit=time_limit)
