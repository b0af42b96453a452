"""CBC bundled with PuLP: the fallback exact back-end (needs no optional library but PuLP)."""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Mapping

import numpy as np

from solver._compiled import CompiledProblem
from solver.backends._ilp import Layout, solve_tightened
from solver.backends.base import Backend, Outcome


class CbcBackend(Backend):
    """PuLP's CBC with zero gaps. CBC does not report its bound through PuLP, so on a time limit the
    bound is the LP relaxation's optimum (solved by CBC too): weaker, but proven. PuLP also reports
    "infeasible" when CBC stops on time with no plan, so under a time limit only an infeasible LP
    relaxation counts as proof."""

    name = "cbc"
    max_budgets = None

    def available(self) -> bool:
        if importlib.util.find_spec("pulp") is None:
            return False
        import pulp

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return bool(pulp.PULP_CBC_CMD(msg=False).available())

    def solve(
        self,
        compiled: CompiledProblem,
        objective: np.ndarray,
        limits: Mapping[str, float],
        *,
        time_limit: float | None = None,
        start: np.ndarray | None = None,
    ) -> Outcome:
        def run(lay: Layout, first: bool) -> Outcome:
            with warnings.catch_warnings():  # PuLP 3 flags its 4.0 API changes on every variable
                warnings.simplefilter("ignore", DeprecationWarning)
                return _run(lay, time_limit)

        return solve_tightened(compiled, objective, limits, run)


def _build(lay: Layout, *, relax: bool):
    import pulp

    prob = pulp.LpProblem("bitplan", pulp.LpMinimize)
    cat = pulp.LpContinuous if relax else pulp.LpBinary
    xs = [pulp.LpVariable(f"x{i}", lowBound=0, upBound=1, cat=cat) for i in range(lay.col_group.size)]
    prob += pulp.LpAffineExpression(list(zip(xs, lay.obj.tolist())))
    order = np.argsort(lay.col_group, kind="stable")
    bounds = np.flatnonzero(np.diff(lay.col_group[order])) + 1
    for cols in np.split(order, bounds):
        prob += pulp.LpAffineExpression([(xs[i], 1.0) for i in cols.tolist()]) == 1
    for r in range(len(lay.row_names)):
        terms = [(xs[i], v) for i, v in enumerate(lay.row_coef[r].tolist()) if v != 0]
        prob += pulp.LpAffineExpression(terms) <= float(lay.row_upper[r])
    return prob, xs


def _run(lay: Layout, time_limit: float | None) -> Outcome:
    import pulp

    if lay.col_group.size == 0:
        return Outcome(lay.fixed.copy(), "optimal", lay.obj_shift)
    prob, xs = _build(lay, relax=False)
    limit = None if time_limit is None else max(float(time_limit), 0.01)
    # "increment 0": CBC otherwise only accepts improvements above an objective increment it
    # guesses, and calls a plan 1e-5 worse than the best one optimal.
    cmd = pulp.PULP_CBC_CMD(msg=False, timeLimit=limit, gapRel=0, gapAbs=0, threads=1, options=["increment 0"])
    prob.solve(cmd)
    if prob.status == pulp.LpStatusInfeasible and time_limit is None:
        return Outcome(None, "infeasible", float("inf"))
    values = np.array([x.varValue if x.varValue is not None else 0.0 for x in xs])
    if prob.sol_status == pulp.LpSolutionOptimal:
        return Outcome(lay.choice(values), "optimal", lay.objective_value(float(values @ lay.obj)))
    relaxed, _ = _build(lay, relax=True)
    relaxed.solve(pulp.PULP_CBC_CMD(msg=False, threads=1))
    if relaxed.status == pulp.LpStatusInfeasible:
        return Outcome(None, "infeasible", float("inf"))
    bound = lay.objective_value(pulp.value(relaxed.objective)) if relaxed.status == 1 else -np.inf
    if prob.sol_status == pulp.LpSolutionIntegerFeasible:
        return Outcome(lay.choice(values), "time_limit", bound)
    return Outcome(None, "no_solution", bound)
