"""HiGHS through highspy: the general exact back-end for any number of budgets."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping

import numpy as np

from solver._compiled import CompiledProblem
from solver.backends._ilp import Layout, solve_tightened
from solver.backends.base import Backend, Outcome


class HighsBackend(Backend):
    """Branch and cut in HiGHS with gaps set to zero; warm-started from `start` when given."""

    name = "highs"
    max_budgets = None

    def available(self) -> bool:
        return importlib.util.find_spec("highspy") is not None

    def solve(
        self,
        compiled: CompiledProblem,
        objective: np.ndarray,
        limits: Mapping[str, float],
        *,
        time_limit: float | None = None,
        start: np.ndarray | None = None,
    ) -> Outcome:
        # After a tightening the old plan no longer fits: warm-start only the first try.
        return solve_tightened(
            compiled, objective, limits, lambda lay, first: _run(lay, time_limit, start if first else None)
        )


# HiGHS 1.16 can report a warm-start plan as optimal when a better one exists (a 4-unit table in
# tests/solver/test_frontier.py: start damage 2, optimum 0, status kOptimal). Off until understood;
# correctness over the small speed-up.
_USE_START = False


def _run(lay: Layout, time_limit: float | None, start: np.ndarray | None) -> Outcome:
    import highspy

    n = lay.col_group.size
    if n == 0:
        return Outcome(lay.fixed.copy(), "optimal", lay.obj_shift)
    groups, first = np.unique(lay.col_group, return_index=True)
    n_groups = groups.size
    n_rows = n_groups + len(lay.row_names)
    group_row = np.searchsorted(groups, lay.col_group)

    # Column-wise matrix: each column has its group's row, then its nonzero budget coefficients.
    entries_row = [group_row[None, :]]
    entries_val = [np.ones((1, n))]
    for r in range(len(lay.row_names)):
        entries_row.append(np.full((1, n), n_groups + r))
        entries_val.append(lay.row_coef[r][None, :])
    rows = np.vstack(entries_row)
    vals = np.vstack(entries_val)
    keep = vals != 0
    index = rows.T[keep.T]
    value = vals.T[keep.T]
    start_ptr = np.concatenate([[0], np.cumsum(keep.sum(axis=0))])

    lp = highspy.HighsLp()
    lp.num_col_ = n
    lp.num_row_ = n_rows
    lp.col_cost_ = lay.obj
    lp.col_lower_ = np.zeros(n)
    lp.col_upper_ = np.ones(n)
    inf = highspy.kHighsInf
    lp.row_lower_ = np.concatenate([np.ones(n_groups), np.full(len(lay.row_names), -inf)])
    lp.row_upper_ = np.concatenate([np.ones(n_groups), lay.row_upper])
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = start_ptr.astype(np.int32)
    lp.a_matrix_.index_ = index.astype(np.int32)
    lp.a_matrix_.value_ = value
    lp.integrality_ = [highspy.HighsVarType.kInteger] * n

    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("mip_abs_gap", 0.0)
    h.setOptionValue("mip_feasibility_tolerance", 1e-9)
    h.setOptionValue("primal_feasibility_tolerance", 1e-9)
    if time_limit is not None:
        h.setOptionValue("time_limit", max(float(time_limit), 1e-3))
    h.passModel(lp)
    if start is not None and _USE_START:
        sol = highspy.HighsSolution()
        sol.col_value = lay.columns_of(np.asarray(start)).tolist()
        h.setSolution(sol)
    h.run()

    status = h.getModelStatus()
    info = h.getInfo()
    has_plan = info.primal_solution_status == 2  # kSolutionStatusFeasible
    if status == highspy.HighsModelStatus.kOptimal and has_plan:
        choice = lay.choice(np.asarray(h.getSolution().col_value))
        return Outcome(choice, "optimal", lay.objective_value(info.objective_function_value))
    if status == highspy.HighsModelStatus.kInfeasible:
        return Outcome(None, "infeasible", float("inf"))
    bound = lay.objective_value(info.mip_dual_bound) if np.isfinite(info.mip_dual_bound) else -np.inf
    if has_plan:
        return Outcome(lay.choice(np.asarray(h.getSolution().col_value)), "time_limit", bound)
    return Outcome(None, "no_solution", bound)
