"""`solve`: one exact plan under any number of budgets, its optimality checked by bitplan itself."""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from solver._compiled import CompiledProblem, compile_problem, limits_of
import numpy as np

from solver.backends import AUTO, auto_backend, get_backend
from solver.backends._ilp import fits, violation
from solver.backends._mckp import Knapsack, objective_tolerance
from solver.backends._two import TwoBudget
from solver.backends.base import Outcome
from solver.errors import BackendUnavailable, InfeasibleBudget, SolverError
from solver.plan import STATUS_FEASIBLE, STATUS_OPTIMAL, STATUS_TIME_LIMIT, Plan, relative_gap
from solver.problem import Budget, Problem


class TimeLimitReached(SolverError):
    """The time limit ended before the back-end found any plan that meets the budgets."""


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def check_reachable(compiled: CompiledProblem, limits: Mapping[str, float]) -> dict[str, float]:
    """Minimum of every budgeted cost; raises InfeasibleBudget naming the limits below theirs."""
    minimums = {name: compiled.minimum(name) for name in limits}
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


TOLERANCE = 1e-9  # relative gap to bitplan's own bound within which an unchecked plan counts as optimal
EXACT = ("mckp", "mckp2", "dp")


@dataclass(frozen=True)
class _Result:
    """An outcome with who made it and, when proven optimal, the absolute tolerance of the proof."""

    out: Outcome
    backend: str
    abs_tol: float | None = None


def solve_compiled(
    compiled: CompiledProblem,
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
    minimums = check_reachable(compiled, limits)
    if backend == AUTO and impl.name in ("mckp", "mckp2"):
        res = _auto_exact(compiled, limits, time_limit, start, started)
    elif impl.name in EXACT:
        out = impl.solve(compiled, compiled.damage, limits, time_limit=time_limit, start=start)
        res = _Result(out, impl.name, objective_tolerance(compiled.damage, compiled.valid))
    else:
        out = impl.solve(compiled, compiled.damage, limits, time_limit=time_limit, start=start)
        res = _checked(compiled, limits, _Result(out, impl.name), _left(time_limit, started))
    return plan_of(compiled, limits, res, minimums, time_limit, started)


def plan_of(compiled: CompiledProblem, limits, res: _Result, minimums, time_limit, started) -> Plan:
    out, name = res.out, res.backend
    if out.status == "infeasible":
        names = ", ".join(f"{n} ≤ {_fmt(v)}" for n, v in limits.items())
        raise InfeasibleBudget(
            f"budgets {names} cannot all be met together, though each can alone", minimums=minimums, violated=()
        )
    if out.choice is None:
        raise TimeLimitReached(f"time limit of {time_limit} s ended before {name} found a plan")
    if out.status == "optimal":
        damage = compiled.totals(out.choice)[0]
        bound = None if res.abs_tol is not None else out.bound
        tol = _relative(res.abs_tol, damage) if res.abs_tol is not None else TOLERANCE
        return compiled.plan(out.choice, backend=name, started=started, status=STATUS_OPTIMAL, bound=bound, tolerance=tol)
    status = STATUS_TIME_LIMIT if out.status == "time_limit" else STATUS_FEASIBLE
    return compiled.plan(out.choice, backend=name, started=started, status=status, bound=out.bound)


def _relative(abs_tol: float, damage: float) -> float:
    return abs_tol / max(abs(damage), abs_tol, 1e-300)


def _left(time_limit: float | None, started: float) -> float | None:
    return None if time_limit is None else max(time_limit - (time.perf_counter() - started), 1e-3)


def exact_solver(compiled: CompiledProblem, limits: Mapping[str, float]):
    """The exact method for these limits (≤ 2), as a callable (start, time_limit) → Outcome."""
    names = list(limits)
    if len(names) == 2:
        two = TwoBudget(compiled.cost(names[0]), compiled.cost(names[1]), compiled.damage, compiled.valid)
        return "mckp2", lambda start, tl: two.solve(limits[names[0]], limits[names[1]], start=start, time_limit=tl)
    cost = compiled.cost(names[0]) if names else np.zeros(compiled.valid.shape)
    limit = limits[names[0]] if names else 0.0
    ks = Knapsack(cost, compiled.damage, compiled.valid)
    return "mckp", lambda start, tl: ks.solve(limit, start=start, time_limit=tl)


def _checked(
    compiled: CompiledProblem, limits: Mapping[str, float], res: _Result, time_limit: float | None
) -> _Result:
    """An ILP back-end's "optimal" checked against bitplan's own methods. Up to two budgets the
    exact knapsack methods are rerun from the ILP's plan (quick with that incumbent): a better plan
    replaces it (named after its method), otherwise the ILP's plan is optimal to their tolerance.
    More budgets: every pair of them is an exact relaxation; its optimum is the answer when it meets
    all budgets, else the best pair's value is the bound the ILP's plan is measured against."""
    out = res.out
    if out.status != "optimal" or out.choice is None:
        return res
    started = time.perf_counter()
    abs_tol = objective_tolerance(compiled.damage, compiled.valid)
    value = compiled.totals(out.choice)[0]
    names = list(limits)
    groups = [names] if len(names) <= 2 else list(itertools.combinations(names, 2))
    bound = -np.inf
    for group in groups:
        sub = {n: limits[n] for n in group}
        method, run = exact_solver(compiled, sub)
        start = out.choice if len(groups) == 1 else None
        ex = run(start, _left(time_limit, started))
        if ex.status == "optimal" and ex.choice is not None:
            ex_value = compiled.totals(ex.choice)[0]
            if not violation(compiled, ex.choice, limits):
                if ex_value < value - abs_tol:
                    return _Result(ex, method, abs_tol)
                return _Result(out, res.backend, abs_tol)
            bound = max(bound, ex_value)
        elif ex.status == "infeasible":
            return _Result(Outcome(None, "infeasible", np.inf), method)
        else:
            bound = max(bound, ex.bound)
    bound = min(bound, value)
    status = "optimal" if relative_gap(value, bound) <= TOLERANCE else "feasible"
    return _Result(Outcome(out.choice, status, bound), res.backend)


AUTO_NODE_LIMIT = 50_000


def _auto_exact(compiled: CompiledProblem, limits, time_limit, start, started) -> _Result:
    """The knapsack methods first (one budget: with a node limit; two: with their state cap); if
    they stop incomplete (adversarial tables with many equal trade-offs), hand the incumbent to
    the general ILP as a warm start, and measure its plan against the knapsack's proven bound."""
    abs_tol = objective_tolerance(compiled.damage, compiled.valid)
    if len(limits) == 2:
        (na, la), (nb, lb) = limits.items()
        two = TwoBudget(compiled.cost(na), compiled.cost(nb), compiled.damage, compiled.valid)
        out, name = two.solve(la, lb, start=start, time_limit=time_limit), "mckp2"
    else:
        if limits:
            (cname, limit), = limits.items()
            cost = compiled.cost(cname)
        else:
            cost, limit = np.zeros(compiled.valid.shape), 0.0
        out = Knapsack(cost, compiled.damage, compiled.valid).solve(
            limit, time_limit=time_limit, start=start, node_limit=AUTO_NODE_LIMIT
        )
        name = "mckp"
    if out.status != "incomplete":
        return _Result(out, name, abs_tol if out.status == "optimal" else None)
    try:
        general = auto_backend(len(limits), general=True)
    except BackendUnavailable:
        return _Result(Outcome(out.choice, "feasible", out.bound), name)
    ilp = general.solve(
        compiled, compiled.damage, limits, time_limit=_left(time_limit, started), start=out.choice
    )
    bound = max(out.bound, ilp.bound if ilp.status != "optimal" else -np.inf)
    if ilp.choice is None or compiled.totals(ilp.choice)[0] > compiled.totals(out.choice)[0]:
        best, who = out.choice, name
    else:
        best, who = ilp.choice, general.name
    value = compiled.totals(best)[0]
    bound = min(bound, value)
    if relative_gap(value, bound) <= TOLERANCE:
        return _Result(Outcome(best, "optimal", bound), who)
    timed_out = ilp.status in ("time_limit", "no_solution")
    return _Result(Outcome(best, "time_limit" if timed_out else "feasible", bound), who)


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
    or "auto" (the specialised knapsack for one budget, its two-budget extension for two, HiGHS
    otherwise, CBC as fallback). An ILP's "optimal" is checked by bitplan's own methods first (see
    `_checked`); `Plan.tolerance` states what "optimal" was proven to.
    """
    if isinstance(budgets, Budget):
        budgets = [budgets]
    compiled = compile_problem(problem)
    return solve_compiled(compiled, limits_of(compiled, budgets), backend=backend, time_limit=time_limit)
