"""Exact multiple-choice knapsack: one budget, one option per group, least total objective.

Method (pure numpy, no solver library):
1. Lower convex hull of every group's (cost, objective) points. Walking all hull segments in order
   of decreasing efficiency (objective saved per cost) solves the LP relaxation: at most one group
   ends fractional, and the break segment's efficiency is the optimal Lagrange multiplier λ.
2. Dropping the fractional segment and greedily filling what is left gives a feasible plan (the
   incumbent). The Lagrangian bound L(λ) = Σ_g min_j (obj + λ·cost) − λ·B holds for any λ ≥ 0.
3. Reduced-cost fixing: forcing group g to option j raises the bound by rc_gj − min_j rc_gj; options
   whose bound reaches the incumbent are removed, groups left with one option are fixed. On realistic
   tables this leaves a small core.
4. Depth-first branch and bound on the core, branching on the fractional group, repeating 1–3 at
   every node. Prunes only when a node's bound cannot beat the incumbent by more than OBJ_REL
   (1e-12) of Σ_g max_j |objective|, so the result is optimal to that tolerance.

The root hull does not depend on the budget, so `Knapsack` keeps it and answers many budgets
(a whole frontier) at the cost of a search per budget.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from solver._compiled import CompiledProblem
from solver.backends import _lattice, _pareto
from solver.backends._ilp import FEAS_REL
from solver.backends.base import Backend, Outcome, single_budget

OBJ_REL = 1e-12
COST_REL = 1e-12  # costs closer than this (relative to the largest) are equal for the hull's base
CORE_DP = True  # False restores the pure branch and bound (kept for the benchmark's comparison)


class _Hull:
    """Hull segments of every row, sorted by decreasing efficiency (rows' own order kept)."""

    def __init__(self, cost: np.ndarray, obj: np.ndarray, valid: np.ndarray):
        n, width = cost.shape
        rows = np.arange(n)
        c = np.where(valid, cost, np.inf)
        d = np.where(valid, obj, np.inf)
        # The base is the least-damage option among those as cheap as the cheapest up to rounding:
        # costs of merged (tied) units are sums, so "equal" costs can differ in the last bit, and a
        # budget check with slack would then see a better plan at the base's own cost.
        finite = np.abs(c[np.isfinite(c)])
        tol = COST_REL * (float(finite.max()) if finite.size else 0.0)
        cheapest = c.min(axis=1, keepdims=True)
        near = valid & (c <= cheapest + tol)
        cur = np.where(near, d, np.inf).argmin(axis=1)
        vertices = np.empty((n, width), dtype=np.intp)
        vertices[:, 0] = cur
        prev_eff = np.full(n, np.inf)
        seg_row, seg_step, seg_dc, seg_dd, seg_eff = [], [], [], [], []
        for step in range(1, width):
            dc = c - c[rows, cur][:, None]
            dd = d - d[rows, cur][:, None]
            cand = valid & (dc > 0) & (dd < 0)
            if not cand.any():
                break
            with np.errstate(divide="ignore", invalid="ignore"):
                slope = np.where(cand, dd / np.where(cand, dc, 1.0), np.inf)
            smin = slope.min(axis=1)
            has = np.flatnonzero(np.isfinite(smin))
            tie = cand[has] & (slope[has] <= smin[has, None])
            nxt = np.where(tie, c[has], -np.inf).argmax(axis=1)
            eff = np.minimum(-smin[has], prev_eff[has])  # rounding must not break the hull's order
            prev_eff[has] = eff
            seg_row.append(has)
            seg_step.append(np.full(has.size, step))
            seg_dc.append(dc[has, nxt])
            seg_dd.append(dd[has, nxt])
            seg_eff.append(eff)
            cur = cur.copy()
            cur[has] = nxt
            vertices[has, step] = nxt
        cat = (lambda xs, dt=float: np.concatenate(xs) if xs else np.empty(0, dtype=dt))
        row, stp = cat(seg_row, np.intp), cat(seg_step, np.intp)
        sdc, sdd, seff = cat(seg_dc), cat(seg_dd), cat(seg_eff)
        order = np.lexsort((stp, -seff))
        self.row, self.dc, self.dd, self.eff = row[order], sdc[order], sdd[order], seff[order]
        self.cum_dc = np.cumsum(self.dc)
        self.suffix_min_dc = np.minimum.accumulate(self.dc[::-1])[::-1] if self.dc.size else self.dc
        self.vertices = vertices
        self.base = vertices[:, 0]
        self.base_cost = float(c[rows, self.base].sum())
        self.n_steps = np.bincount(row, minlength=n) if row.size else np.zeros(n, dtype=np.intp)


def _lattice_step(cost: np.ndarray, valid: np.ndarray) -> float:
    """When every cost is an integer, totals move in steps of the gcd of the options' differences
    from their group's cheapest; a budget can be rounded down to that lattice without losing any
    plan, which tightens the LP bound (bytes of power-of-two layers share large common factors)."""
    c = np.where(valid, cost, np.nan)
    diffs = (c - np.nanmin(c, axis=1)[:, None])[valid]
    if diffs.size == 0 or not np.all(np.isfinite(diffs)) or diffs.max() >= 2.0**52:
        return 0.0
    if not np.array_equal(diffs, np.round(diffs)) or not np.array_equal(c[valid], np.round(c[valid])):
        return 0.0
    ints = diffs.astype(np.int64)
    ints = ints[ints > 0]
    return float(np.gcd.reduce(ints)) if ints.size else 0.0


def _improve(opts: np.ndarray, c: np.ndarray, d: np.ndarray, left: float, rounds: int = 64) -> np.ndarray:
    """Local search on a feasible choice: best single move into the unused budget, else the best
    pair of moves in different groups (one frees budget, the other spends it). Heuristic only."""
    rows = np.arange(opts.size)
    opts = opts.copy()
    for _ in range(rounds):
        dc = c - c[rows, opts][:, None]
        dd = d - d[rows, opts][:, None]
        ok = np.isfinite(dc) & np.isfinite(dd)
        single = np.where(ok & (dc <= left) & (dd < 0), dd, np.inf)
        r1, j1 = np.unravel_index(np.argmin(single), single.shape)
        best_single = single[r1, j1]
        mr, mj = np.nonzero(ok & (dd != 0))
        mdc, mdd = dc[mr, mj], dd[mr, mj]
        order = np.argsort(mdc, kind="stable")
        sdc, sdd, srow = mdc[order], mdd[order], mr[order]
        if sdc.size < 2:
            break
        # For each move B, the best partner A among moves with dc_A ≤ left − dc_B.
        pref = np.minimum.accumulate(sdd)
        pref_arg = np.zeros(sdd.size, dtype=np.intp)
        is_new = np.r_[True, sdd[1:] < pref[:-1]]
        pref_arg[is_new] = np.flatnonzero(is_new)
        pref_arg = np.maximum.accumulate(pref_arg)
        idx = np.searchsorted(sdc, left - sdc, side="right") - 1
        has = idx >= 0
        a = pref_arg[np.where(has, idx, 0)]
        total = np.where(has & (srow[a] != srow) & (a != np.arange(sdc.size)), sdd + sdd[a], np.inf)
        b = int(np.argmin(total))
        best_pair = total[b]
        if min(best_single, best_pair) >= 0:
            break
        if best_single <= best_pair:
            left -= dc[r1, j1]
            opts[r1] = j1
        else:
            for k in (order[b], order[a[b]]):
                r, j = mr[k], mj[k]
                left -= dc[r, j]
                opts[r] = j
    return opts


@dataclass
class _Node:
    rows: np.ndarray  # root group indices still open
    valid: np.ndarray  # options still allowed for those rows
    budget: float
    offset: float  # objective of the groups fixed on the way here
    fixed: tuple | None  # (parent chain, rows, options): persistent list of fixings
    lb: float


def objective_tolerance(obj: np.ndarray, valid: np.ndarray) -> float:
    """Absolute objective tolerance of the exact methods: OBJ_REL of Σ_g max_j |obj| (float sums
    over the table cannot be trusted much below that)."""
    scale = np.where(valid, np.abs(obj), 0.0).max(axis=1).sum()
    return OBJ_REL * max(float(scale), 1e-300)


class Knapsack:
    """Exact solver for one objective and one cost over a CompiledProblem, reusable across budgets."""

    def __init__(self, cost: np.ndarray, obj: np.ndarray, valid: np.ndarray, *, core_dp: bool | None = None):
        self.core_dp = CORE_DP if core_dp is None else core_dp
        self.cost = np.where(valid, cost, np.inf)
        self.obj = np.where(valid, obj, np.inf)
        self.valid = valid
        self.root_hull = _Hull(cost, obj, valid)
        self.otol = objective_tolerance(obj, valid)
        self.step = _lattice_step(cost, valid)

    def effective_budget(self, budget: float) -> float:
        """`budget` rounded down to the lattice of reachable totals (see _lattice_step)."""
        base = self.root_hull.base_cost
        if self.step <= 0 or budget < base:
            return budget
        return min(budget, base + self.step * np.floor((budget - base) / self.step + 1e-9))

    def minimum_cost(self) -> float:
        return self.root_hull.base_cost

    def lagrangian_bound(self, budget: float) -> float:
        """LP relaxation optimum at `budget` (a proven lower bound; +inf when infeasible)."""
        hull = self.root_hull
        resid = budget - hull.base_cost
        if resid < -FEAS_REL * max(1.0, abs(budget)):
            return float("inf")
        k = int(np.searchsorted(hull.cum_dc, resid, side="right"))
        lam = hull.eff[k] if k < hull.eff.size else 0.0
        rc = np.where(self.valid, self.obj + lam * np.where(self.valid, self.cost, 0.0), np.inf)
        return float(rc.min(axis=1).sum() - lam * budget)

    def solve(
        self,
        budget: float,
        *,
        time_limit: float | None = None,
        start: np.ndarray | None = None,
        node_limit: int | None = None,
    ) -> Outcome:
        """Optimal choice for `budget`; "time_limit" (or "incomplete" past `node_limit` nodes)
        returns the incumbent with the least bound of the open nodes."""
        deadline = None if time_limit is None else time.perf_counter() + time_limit
        ctol = FEAS_REL * max(1.0, abs(budget))
        n = self.cost.shape[0]
        all_rows = np.arange(n)
        best_val, best = np.inf, None
        if start is not None:
            start = np.asarray(start, dtype=np.intp)
            if self.valid[all_rows, start].all() and self.cost[all_rows, start].sum() <= budget + ctol:
                best_val, best = float(self.obj[all_rows, start].sum()), start.copy()

        def materialise(node: _Node, rows: np.ndarray, opts: np.ndarray) -> np.ndarray:
            out = np.full(n, -1, dtype=np.intp)
            out[rows] = opts
            chain = node.fixed
            while chain is not None:
                chain, frows, fopts = chain
                out[frows] = fopts
            return out

        bud_root = self.effective_budget(budget)
        stack = [_Node(all_rows, self.valid, bud_root, 0.0, None, -np.inf)]
        root = True
        nodes = 0
        while stack:
            node = stack.pop()
            nodes += 1
            out_of_time = deadline is not None and time.perf_counter() > deadline
            out_of_nodes = node_limit is not None and nodes > node_limit
            if not root and (out_of_time or out_of_nodes):
                bound = min([best_val, node.lb, *(s.lb for s in stack)])
                if best is None:
                    return Outcome(None, "no_solution", bound)
                return Outcome(best, "time_limit" if out_of_time else "incomplete", bound)
            rows, valid, bud, offset, fixed = node.rows, node.valid, node.budget, node.offset, node.fixed
            first = root
            root = False
            hull = None
            while True:
                if rows.size == 0:
                    if bud >= -ctol and offset < best_val:
                        best_val, best = offset, materialise(_Node(rows, valid, bud, offset, fixed, 0), rows, rows)
                    break
                c = np.where(valid, self.cost[rows], np.inf)
                d = np.where(valid, self.obj[rows], np.inf)
                hull = self.root_hull if first else _Hull(c, d, valid)
                first = False
                local = np.arange(rows.size)
                resid = bud - hull.base_cost
                if resid < -ctol:
                    break
                k = int(np.searchsorted(hull.cum_dc, resid, side="right"))
                here = _Node(rows, valid, bud, offset, fixed, 0)
                if k == hull.dc.size:  # every segment fits: the cheapest least-objective choice is optimal
                    opts = hull.vertices[local, hull.n_steps]
                    val = offset + float(d[local, opts].sum())
                    if val < best_val:
                        best_val, best = val, materialise(here, rows, opts)
                    break
                lam = float(hull.eff[k])
                rc = np.where(valid, d + lam * np.where(valid, c, 0.0), np.inf)
                m = rc.min(axis=1)
                lb = offset + float(m.sum()) - lam * bud
                if lb >= best_val - self.otol:
                    break
                # Greedy incumbent: the LP's integral part, then any later segment that still fits.
                counts = np.bincount(hull.row[:k], minlength=rows.size)
                left = resid - (hull.cum_dc[k - 1] if k else 0.0)
                blocked = {int(hull.row[k])}
                dcs, srows = hull.dc, hull.row
                for j in range(k + 1, hull.dc.size):
                    if left < hull.suffix_min_dc[j]:
                        break
                    r = int(srows[j])
                    if r in blocked:
                        continue
                    if dcs[j] <= left:
                        counts[r] += 1
                        left -= dcs[j]
                    else:
                        blocked.add(r)
                opts = hull.vertices[local, counts]
                if hull is self.root_hull:
                    opts = _improve(opts, c, d, bud - float(c[local, opts].sum()))
                val = offset + float(d[local, opts].sum())
                if val < best_val and float(c[local, opts].sum()) <= bud + ctol:
                    best_val, best = val, materialise(here, rows, opts)
                keep = valid & (lb + (rc - m[:, None]) < best_val - self.otol)
                n_keep = keep.sum(axis=1)
                if (n_keep == 0).any():
                    break  # some group has no option that could beat the incumbent
                single = n_keep == 1
                if single.any():
                    srow = np.flatnonzero(single)
                    sopt = keep[srow].argmax(axis=1)
                    offset += float(d[srow, sopt].sum())
                    bud -= float(c[srow, sopt].sum())
                    fixed = (fixed, rows[srow], sopt)
                    rows, valid = rows[~single], keep[~single]
                    continue
                if (keep != valid).any():
                    valid = keep
                    continue
                if nodes == 1 and self.core_dp and (deadline is None or time.perf_counter() < deadline):
                    # Root core left after fixing: solve it exactly by DP over its cost lattice
                    # when it has one (see _lattice.py); no branching needed then.
                    slack = ctol + budget - bud_root
                    status, opts = _lattice.solve_budget(c, d, valid, bud, slack)
                    if status == "unavailable":  # off any lattice: Pareto-state DP with bounds
                        status, opts = _pareto.solve_core(c, d, valid, hull, bud, slack, best_val - offset, self.otol)
                        status = {"none": "infeasible"}.get(status, status)
                    if status == "optimal":
                        val = offset + float(d[local, opts].sum())
                        if val < best_val:
                            best_val, best = val, materialise(here, rows, opts)
                        stack.clear()
                        break
                    if status == "infeasible":
                        stack.clear()
                        break  # nothing in the core beats the incumbent within the budget
                f = int(hull.row[k])
                opts_f = np.flatnonzero(keep[f])
                child_lb = lb + rc[f, opts_f] - m[f]
                rest = np.ones(rows.size, dtype=bool)
                rest[f] = False
                for j in np.argsort(-child_lb, kind="stable"):
                    o = int(opts_f[j])
                    stack.append(
                        _Node(
                            rows[rest],
                            valid[rest],
                            bud - float(c[f, o]),
                            offset + float(d[f, o]),
                            (fixed, rows[f : f + 1], np.array([o])),
                            float(child_lb[j]),
                        )
                    )
                break
        if best is None:
            return Outcome(None, "infeasible", float("inf"))
        return Outcome(best, "optimal", best_val)


class MckpBackend(Backend):
    """The specialised exact method for zero or one budget (see the module docstring)."""

    name = "mckp"
    max_budgets = 1

    def available(self) -> bool:
        return True

    def solve(
        self,
        compiled: CompiledProblem,
        objective: np.ndarray,
        limits: Mapping[str, float],
        *,
        time_limit: float | None = None,
        start: np.ndarray | None = None,
    ) -> Outcome:
        cost, limit = single_budget(compiled, limits, "mckp")
        return Knapsack(cost, objective, compiled.valid).solve(limit, time_limit=time_limit, start=start)
