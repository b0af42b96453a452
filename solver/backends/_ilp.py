"""Shared ILP layout for the general back-ends: one binary per (group, surviving option).

Options dominated in the objective and every limited cost are dropped (they can never be needed),
groups left with one option are fixed, each group's least objective and cost are subtracted (the
"exactly one" row makes that a constant), rows are scaled to unit magnitude and the objective by
the LP bound of its optimum, so solver tolerances act relatively to the answer's own size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from solver._compiled import CompiledProblem
from solver.backends.base import Outcome
from solver.errors import SolverError

FEAS_REL = 1e-10
TIGHTEN_TRIES = 3


def fits(total: float, limit: float) -> bool:
    """Budget test with a relative slack far below any meaningful cost difference."""
    return total <= limit + FEAS_REL * max(1.0, abs(limit))


@dataclass(frozen=True)
class Layout:
    fixed: np.ndarray  # option per group, -1 where the group is decided by the solver
    col_group: np.ndarray
    col_option: np.ndarray
    obj: np.ndarray  # scaled, shifted objective per column
    obj_scale: float
    obj_shift: float  # objective of the fixed groups plus every free group's minimum
    row_names: tuple[str, ...]
    row_coef: np.ndarray  # (rows, cols) scaled, shifted costs
    row_upper: np.ndarray  # scaled limits left for the free groups

    def choice(self, x: np.ndarray) -> np.ndarray:
        out = self.fixed.copy()
        picked = x > 0.5
        out[self.col_group[picked]] = self.col_option[picked]
        if (out < 0).any():
            raise SolverError("solver returned a plan that leaves a group without an option")
        return out

    def columns_of(self, choice: np.ndarray) -> np.ndarray:
        return (choice[self.col_group] == self.col_option).astype(float)

    def objective_value(self, scaled: float) -> float:
        return scaled * self.obj_scale + self.obj_shift


def layout(compiled: CompiledProblem, objective: np.ndarray, limits: Mapping[str, float]) -> Layout | None:
    """Columns and rows of the ILP, or None when the fixed groups alone break a limit."""
    valid = compiled.valid
    names = tuple(limits)
    costs = [np.where(valid, compiled.cost(n), np.inf) for n in names]
    obj = np.where(valid, objective, np.inf)
    # k dominates j: no worse everywhere, and better somewhere or earlier (keeps one of equals).
    le = obj[:, :, None] <= obj[:, None, :]
    lt = obj[:, :, None] < obj[:, None, :]
    for c in costs:
        le &= c[:, :, None] <= c[:, None, :]
        lt |= c[:, :, None] < c[:, None, :]
    k = valid.shape[1]
    earlier = np.tri(k, k, -1, dtype=bool).T  # earlier[k, j]: k < j
    dominated = (le & (lt | earlier[None]) & valid[:, :, None]).any(axis=1)
    keep = valid & ~dominated
    count = keep.sum(axis=1)
    fixed = np.where(count == 1, keep.argmax(axis=1), -1)
    free = count > 1
    col_group, col_option = np.nonzero(keep & free[:, None])

    rows_fixed = np.nonzero(~free)[0]
    shift_obj = obj[rows_fixed, fixed[rows_fixed]].sum()
    gmin = np.where(keep, obj, np.inf).min(axis=1)
    col_obj = obj[col_group, col_option] - gmin[col_group]
    shift_obj += gmin[free].sum()
    scale = _objective_scale(compiled, objective, limits, float(shift_obj), col_obj)

    coef = np.zeros((len(names), col_group.size))
    upper = np.zeros(len(names))
    for r, (name, c) in enumerate(zip(names, costs)):
        cmin = np.where(keep, c, np.inf).min(axis=1)
        left = limits[name] - c[rows_fixed, fixed[rows_fixed]].sum() - cmin[free].sum()
        if left < -FEAS_REL * max(1.0, abs(limits[name])):
            return None
        row = c[col_group, col_option] - cmin[col_group]
        rs = float(row.max()) if row.size and row.max() > 0 else 1.0
        coef[r] = row / rs
        upper[r] = max(left, 0.0) / rs
    return Layout(
        fixed=fixed,
        col_group=col_group,
        col_option=col_option,
        obj=col_obj / scale,
        obj_scale=scale,
        obj_shift=float(shift_obj),
        row_names=names,
        row_coef=coef,
        row_upper=upper,
    )


def _objective_scale(compiled: CompiledProblem, objective: np.ndarray, limits: Mapping[str, float], shift: float, col_obj) -> float:
    """What the shifted objective is divided by: the LP bound of the optimum over the shift when
    that is clearly positive, else the largest column. Solvers' optimality tolerances are absolute;
    scaled by the largest column (a 2-bit option's damage), a plan 1e-4 worse than the optimum at
    16-bit damages was within them (issue 16), scaled by the optimum's own size it is not."""
    from solver.backends._mckp import Knapsack  # _mckp imports this module

    top = float(col_obj.max()) if col_obj.size and col_obj.max() > 0 else 1.0
    est = -np.inf
    for name, limit in limits.items():
        knapsack = Knapsack(compiled.cost(name), objective, compiled.valid)
        est = max(est, knapsack.lagrangian_bound(limit) - shift)
    return est if np.isfinite(est) and est > 1e-9 * top else top


def violation(compiled: CompiledProblem, choice: np.ndarray, limits: Mapping[str, float]) -> dict[str, float]:
    """Limits a choice exceeds (beyond rounding), with the excess."""
    _, totals = compiled.totals(choice)
    return {n: totals[n] - lim for n, lim in limits.items() if not fits(totals[n], lim)}


def solve_tightened(
    compiled: CompiledProblem,
    objective: np.ndarray,
    limits: Mapping[str, float],
    run: Callable[[Layout, bool], Outcome],
) -> Outcome:
    """Lay the ILP out and `run(layout, first_try)` it; when a solver tolerance lets a plan slightly
    over a limit through, tighten that limit by twice the excess and solve again (a few tries)."""
    limits = dict(limits)
    for attempt in range(TIGHTEN_TRIES):
        lay = layout(compiled, objective, limits)
        if lay is None:
            return Outcome(None, "infeasible", float("inf"))
        out = run(lay, attempt == 0)
        if out.choice is None:
            return out
        over = violation(compiled, out.choice, limits)
        if not over:
            return out
        for name, excess in over.items():
            limits[name] -= 2 * excess
    return Outcome(None, "infeasible", float("inf"))
