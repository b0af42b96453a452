"""Exact two-budget knapsack: one option per group, least total objective, two cost limits.

Method (pure numpy, no solver library):
1. Each budget alone is an exact one-budget knapsack (`_mckp.Knapsack`) and a relaxation of the
   pair: when the optimum under budget a alone meets budget b (or the other way round) it is the
   answer. Along a frontier this is the common case: the second budget does not bind there.
2. Otherwise both bind. The LP relaxation's multipliers (λa, λb) come from a search on λb: for a
   fixed λb the LP under budget a with objective obj + λb·cb is a hull walk (as in the knapsack),
   concave in λb with slope cb(LP plan) − B. Any λ ≥ 0 gives the bound
   L(λ) = Σ_g min_j rc_gj − λa·A − λb·B with rc = obj + λa·ca + λb·cb, computed here from the
   table, so no solver tolerance enters the proof.
3. Incumbent: the best of the warm start and the exact one-budget plans of obj + λb·cb under A at
   λb a little past the LP's (feasible for b once λb is large enough).
4. Reduced-cost fixing against the incumbent leaves a core; a Pareto-state DP over the core with
   states (ca, cb, objective) solves it exactly, dropping a state when another costs no more in
   both and has no more objective, when L(λ) plus its reduced costs cannot beat the incumbent, when
   either budget's own LP bound of the groups still to come cannot, or when it cannot fit.

Exact to the knapsack's objective tolerance (`Knapsack.otol`). Past MAX_STATES partial plans the
core DP gives up: the result is then "incomplete" with the incumbent and the proven bound, and the
caller decides (`solve` hands it to an ILP as a warm start).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from solver._compiled import CompiledProblem
from solver.backends._ilp import FEAS_REL, fits
from solver.backends._mckp import Knapsack, _Hull
from solver.backends.base import Backend, Outcome

MAX_STATES = 100_000
BEAMS = (64, 512, None)  # widths of the passes over the core; None: exact
LP_ITERATIONS = 60
NODE_LIMIT = 50_000  # per one-budget search inside (degenerate tables); past it only its bound is used


@dataclass(frozen=True)
class Multipliers:
    """LP multipliers of the two budgets and the bound they prove."""

    lam_a: float
    lam_b: float
    bound: float


class TwoBudget:
    """Exact solver for one objective and two costs over a CompiledProblem's arrays, reusable across limits
    (the one-budget knapsacks' hulls do not depend on the limits)."""

    def __init__(self, cost_a: np.ndarray, cost_b: np.ndarray, obj: np.ndarray, valid: np.ndarray):
        self.valid = valid
        self.ca = np.where(valid, cost_a, np.inf)
        self.cb = np.where(valid, cost_b, np.inf)
        self.obj = np.where(valid, obj, np.inf)
        self._ca0 = np.where(valid, cost_a, 0.0)
        self._cb0 = np.where(valid, cost_b, 0.0)
        self._obj0 = np.where(valid, obj, 0.0)
        self.ka = Knapsack(cost_a, obj, valid)
        self.kb = Knapsack(cost_b, obj, valid)
        self.otol = self.ka.otol
        self.rows = np.arange(valid.shape[0])
        self.last_mu: float | None = None  # λb of the last solve where both budgets bound (a hint)
        self.mu_feasible = 0.0
        spread = lambda a: float((np.where(valid, a, -np.inf).max(axis=1) - np.where(valid, a, np.inf).min(axis=1)).sum())
        self._mu_scale = max(spread(obj), 1e-300) / max(spread(cost_b), 1e-300)

    def value(self, choice: np.ndarray) -> float:
        return float(self.obj[self.rows, choice].sum())

    def totals(self, choice: np.ndarray) -> tuple[float, float]:
        return float(self.ca[self.rows, choice].sum()), float(self.cb[self.rows, choice].sum())

    def fits(self, choice: np.ndarray, a: float, b: float) -> bool:
        ta, tb = self.totals(choice)
        return ta <= a + FEAS_REL * max(1.0, abs(a)) and tb <= b + FEAS_REL * max(1.0, abs(b))

    # --- LP multipliers -------------------------------------------------------------------------

    def _lp(self, mu: float, a: float, b: float) -> tuple[float, float, float]:
        """(L at the best λa for this λb = mu, slope cb(LP plan) − b, that λa)."""
        obj = np.where(self.valid, self._obj0 + mu * self._cb0, np.inf)
        hull = _Hull(self.ca, obj, self.valid)
        resid = a - hull.base_cost
        k = int(np.searchsorted(hull.cum_dc, resid, side="right"))
        lam = float(hull.eff[k]) if k < hull.eff.size else 0.0
        rc = np.where(self.valid, obj + lam * self._ca0, np.inf)
        phi = float(rc.min(axis=1).sum()) - lam * a - mu * b
        counts = np.bincount(hull.row[:k], minlength=self.rows.size)
        x = hull.vertices[self.rows, counts]
        used = float(self._cb0[self.rows, x].sum())
        if k < hull.eff.size:
            r = int(hull.row[k])
            theta = (resid - (hull.cum_dc[k - 1] if k else 0.0)) / hull.dc[k]
            nxt = hull.vertices[r, counts[r] + 1]
            used += theta * (self._cb0[r, nxt] - self._cb0[r, x[r]])
        return phi, used - b, lam

    def multipliers(self, a: float, b: float, hint: float | None = None) -> Multipliers | None:
        """The LP's multipliers (to a small tolerance; any λ ≥ 0 gives a valid bound), or None when
        the LP is infeasible (no plan, fractional or not, meets both limits)."""
        best = Multipliers(0.0, 0.0, -np.inf)

        def at(mu: float) -> float:
            nonlocal best
            phi, slope, lam = self._lp(mu, a, b)
            if phi > best.bound:
                best = Multipliers(lam, mu, phi)
            return phi, slope

        lo, (phi_lo, g_lo) = 0.0, at(0.0)
        self.mu_feasible = 0.0
        if g_lo <= 0:
            return best
        hi = hint if hint and hint > 0 else self._mu_scale
        phi_hi, g_hi = at(hi)
        for _ in range(200):  # grow until the LP plan meets b
            if g_hi <= 0:
                break
            lo, phi_lo, g_lo = hi, phi_hi, g_hi
            hi *= 4.0
            phi_hi, g_hi = at(hi)
        else:
            return None
        if g_hi > 0:
            return None
        for _ in range(LP_ITERATIONS):
            # The two tangents meet at the next trial point (φ is concave piecewise linear, so
            # this ends at its kink in few steps); bisect when that makes too little progress.
            denom = g_lo - g_hi
            mid = (phi_hi - phi_lo + g_lo * lo - g_hi * hi) / denom if denom > 0 else 0.5 * (lo + hi)
            meet = lo < mid < hi and min(mid - lo, hi - mid) >= 0.05 * (hi - lo)
            if not meet:
                mid = 0.5 * (lo + hi) if hi < 4 * max(lo, 1e-300) else np.sqrt(max(lo, hi * 1e-12) * hi)
            line = phi_lo + g_lo * (mid - lo)
            phi_m, g_m = at(mid)
            if meet and line - phi_m <= 1e-13 * max(1.0, abs(phi_m)):
                break  # both tangents reach the function where they meet: that is its maximum
            if g_m > 0:
                lo, phi_lo, g_lo = mid, phi_m, g_m
            else:
                hi, phi_hi, g_hi = mid, phi_m, g_m
            if hi - lo <= 1e-12 * hi:
                break
        self.mu_feasible = hi
        return best

    # --- the solve --------------------------------------------------------------------------------

    def solve(
        self,
        a: float,
        b: float,
        *,
        start: np.ndarray | None = None,
        time_limit: float | None = None,
        hint: float | None = None,
    ) -> Outcome:
        """Optimal choice under ca ≤ a and cb ≤ b; "incomplete" when the core DP gives up."""
        deadline = None if time_limit is None else time.perf_counter() + time_limit
        left = lambda: None if deadline is None else max(deadline - time.perf_counter(), 1e-3)
        best, best_val = None, np.inf
        if start is not None:
            start = np.asarray(start, dtype=np.intp)
            if self.valid[self.rows, start].all() and self.fits(start, a, b):
                best, best_val = start.copy(), self.value(start)

        oa = self.ka.solve(a, start=best, time_limit=left(), node_limit=NODE_LIMIT)
        if oa.status == "infeasible":
            return Outcome(None, "infeasible", np.inf)
        if oa.choice is not None and self.fits(oa.choice, a, b):
            if oa.status == "optimal":
                return Outcome(oa.choice, "optimal", self.value(oa.choice))
            if self.value(oa.choice) < best_val:  # a search stopped at its node limit
                best, best_val = oa.choice, self.value(oa.choice)
        if not fits(self.kb.minimum_cost(), b):
            return Outcome(None, "infeasible", np.inf)
        bound = max(oa.bound, self.kb.lagrangian_bound(b + FEAS_REL * max(1.0, abs(b))))
        # Budget b alone is worth an exact solve only when its LP plan meets a (measured latencies
        # off any lattice make that solve the dearer of the two).
        if _lp_cost_of(self.kb, b, self._ca0) <= a + FEAS_REL * max(1.0, abs(a)):
            ob = self.kb.solve(b, start=best, time_limit=left(), node_limit=NODE_LIMIT)
            if ob.status == "optimal" and self.fits(ob.choice, a, b):
                return Outcome(ob.choice, "optimal", self.value(ob.choice))
            bound = max(bound, ob.bound)

        # Plans count as meeting a limit up to FEAS_REL (see `fits`), so the relaxations get it too.
        a_up, b_up = a + FEAS_REL * max(1.0, abs(a)), b + FEAS_REL * max(1.0, abs(b))
        mult = self.multipliers(a_up, b_up, hint)
        if mult is None:
            return Outcome(None, "infeasible", np.inf)
        bound = max(bound, mult.bound)
        self.last_mu = mult.lam_b

        # Incumbents: the LP plan at the feasible side of λb without its fractional group, filled
        # greedily; and the one-budget optimum of obj + λb·cb under a. Then single moves.
        mu = self.mu_feasible
        for plan in (self._lp_plan(mu, a, b), self._lagrangian_plan(mu, a, b, left())):
            if plan is not None:
                val = self.value(plan)
                if val < best_val:
                    best, best_val = plan, val
        lam_a, lam_b = mult.lam_a, mult.lam_b
        rc = np.where(self.valid, self._obj0 + lam_a * self._ca0 + lam_b * self._cb0, np.inf)
        m = rc.min(axis=1)
        excess = rc - m[:, None]
        lagr = float(m.sum()) - lam_a * a_up - lam_b * b_up
        if best is not None:  # local search among the options reduced-cost fixing leaves
            mask = self.valid & (lagr + excess < best_val - self.otol)
            mask[self.rows, best] = True
            best = _improve2(best, self.ca, self.cb, self.obj, a, b, mask)
            best_val = self.value(best)
        # A narrow (beam) pass over the core improves the incumbent cheaply, and a better incumbent
        # shrinks the core; then an exact pass proves it optimal or finds better. A beam pass that
        # never had to cut is exact too.
        for beam in BEAMS:
            if deadline is not None and time.perf_counter() > deadline:
                break
            if bound >= best_val - self.otol:
                return Outcome(best, "optimal", best_val)
            status, choice = self._core_pass(a, b, rc, excess, lagr, best_val - self.otol, beam, deadline)
            if choice is not None and self.value(choice) < best_val:
                if status == "beam":
                    mask = self.valid & (lagr + excess < self.value(choice) - self.otol)
                    mask[self.rows, choice] = True
                    choice = _improve2(choice, self.ca, self.cb, self.obj, a, b, mask)
                best, best_val = choice, self.value(choice)
            if status in ("optimal", "none"):
                if best is None:
                    return Outcome(None, "infeasible", np.inf)
                return Outcome(best, "optimal", best_val)
        status = "time_limit" if deadline is not None and time.perf_counter() > deadline else "incomplete"
        if best is None:
            return Outcome(None, "no_solution" if status == "time_limit" else "incomplete", bound)
        return Outcome(best, status, min(bound, best_val))

    def _lp_plan(self, mu: float, a: float, b: float) -> np.ndarray | None:
        obj = np.where(self.valid, self._obj0 + mu * self._cb0, np.inf)
        hull = _Hull(self.ca, obj, self.valid)
        k = int(np.searchsorted(hull.cum_dc, a - hull.base_cost, side="right"))
        counts = np.bincount(hull.row[:k], minlength=self.rows.size)
        x = hull.vertices[self.rows, counts]
        ta, tb = self.totals(x)
        if not self.fits(x, a, b):
            return None
        blocked = set() if k >= hull.row.size else {int(hull.row[k])}
        verts, ca, cb = hull.vertices, self.ca, self.cb
        for r in hull.row[k + 1 :].tolist():
            if r in blocked:
                continue
            nxt = verts[r, counts[r] + 1]
            da, db = ca[r, nxt] - ca[r, x[r]], cb[r, nxt] - cb[r, x[r]]
            if ta + da <= a and tb + db <= b:
                ta, tb = ta + da, tb + db
                counts[r] += 1
                x[r] = nxt
            else:
                blocked.add(r)
        return x

    def _lagrangian_plan(self, mu: float, a: float, b: float, time_limit) -> np.ndarray | None:
        obj = np.where(self.valid, self._obj0 + mu * self._cb0, np.inf)
        out = Knapsack(self.ca, obj, self.valid).solve(a, time_limit=time_limit, node_limit=NODE_LIMIT // 10)
        return out.choice if out.choice is not None and self.fits(out.choice, a, b) else None

    def _core_pass(self, a, b, rc, excess, lagr, target, beam, deadline):
        """Reduced-cost fixing against `target`, then the core DP (exact, or a beam of that width).
        Returns (status, full choice or None): "optimal" (the choice is the optimum), "none" (no plan
        beats the target), "beam" (the best the beam found, maybe None), "unavailable" (gave up)."""
        keep = self.valid & (lagr + excess < target)
        n_keep = keep.sum(axis=1)
        if (n_keep == 0).any():
            return "none", None
        fixed = n_keep == 1
        core = np.flatnonzero(~fixed)
        fix_rows = np.flatnonzero(fixed)
        fix_opts = keep[fix_rows].argmax(axis=1)
        choice = np.empty(self.rows.size, dtype=np.intp)
        choice[fix_rows] = fix_opts
        if core.size == 0:
            ok = self.fits(choice, a, b) and self.value(choice) < target
            return ("optimal", choice) if ok else ("none", None)
        room_a = a - float(self.ca[fix_rows, fix_opts].sum())
        room_b = b - float(self.cb[fix_rows, fix_opts].sum())
        base = lagr + float(excess[fix_rows, fix_opts].sum())
        offset = float(self.obj[fix_rows, fix_opts].sum())
        status, opts = _core(
            self.ca[core], self.cb[core], self.obj[core], keep[core], excess[core],
            room_a, room_b, FEAS_REL * max(1.0, abs(a)), FEAS_REL * max(1.0, abs(b)),
            target - offset, base - offset, deadline, beam,
        )  # fmt: skip
        if opts is None:
            return status, None
        choice[core] = opts
        if not self.fits(choice, a, b):
            return "unavailable", None  # rounding at the very edge of a limit: do not claim it
        return status, choice


def _lp_cost_of(ks: Knapsack, limit: float, other: np.ndarray) -> float:
    """Total of `other` in the LP optimum of knapsack `ks` at `limit` (its fractional group counted
    by its fraction)."""
    hull = ks.root_hull
    rows = np.arange(other.shape[0])
    resid = limit - hull.base_cost
    k = int(np.searchsorted(hull.cum_dc, resid, side="right"))
    counts = np.bincount(hull.row[:k], minlength=rows.size)
    x = hull.vertices[rows, counts]
    total = float(other[rows, x].sum())
    if k < hull.row.size:
        r = int(hull.row[k])
        theta = (resid - (hull.cum_dc[k - 1] if k else 0.0)) / hull.dc[k]
        total += theta * (other[r, hull.vertices[r, counts[r] + 1]] - other[r, x[r]])
    return total


def _improve2(opts: np.ndarray, ca, cb, d, a: float, b: float, mask=None, rounds: int = 64) -> np.ndarray:
    """Local search on a choice meeting both limits: the best single move that still fits, else
    the best pair of moves in two groups (one spends what the other frees), while one lowers the
    objective. `mask`: the options moves may go to (those reduced-cost fixing left). Heuristic."""
    rows = np.arange(opts.size)
    opts = opts.copy()
    allowed = np.isfinite(d) if mask is None else mask & np.isfinite(d)
    ta, tb = float(ca[rows, opts].sum()), float(cb[rows, opts].sum())
    for _ in range(rounds):
        da = ca - ca[rows, opts][:, None]
        db = cb - cb[rows, opts][:, None]
        dd = d - d[rows, opts][:, None]
        fa, fb = a - ta, b - tb
        single = np.where(allowed & (da <= fa) & (db <= fb) & (dd < 0), dd, np.inf)
        r, j = np.unravel_index(np.argmin(single), single.shape)
        if single[r, j] < 0:
            ta, tb = ta + da[r, j], tb + db[r, j]
            opts[r] = j
            continue
        gr, gj = np.nonzero(allowed & (dd < 0))  # moves that gain, then moves that free budget
        sr, sj = np.nonzero(allowed & ((da < 0) | (db < 0)) & (dd >= 0))
        if gr.size == 0 or sr.size == 0 or gr.size * sr.size > 2_000_000:
            break
        tot_d = dd[gr, gj][:, None] + dd[sr, sj][None, :]
        fine = (
            (da[gr, gj][:, None] + da[sr, sj][None, :] <= fa)
            & (db[gr, gj][:, None] + db[sr, sj][None, :] <= fb)
            & (gr[:, None] != sr[None, :])
            & (tot_d < 0)
        )
        if not fine.any():
            break
        g, k = np.unravel_index(np.argmin(np.where(fine, tot_d, np.inf)), fine.shape)
        for rr, jj in ((gr[g], gj[g]), (sr[k], sj[k])):
            ta, tb = ta + ca[rr, jj] - ca[rr, opts[rr]], tb + cb[rr, jj] - cb[rr, opts[rr]]
            opts[rr] = jj
    return opts


def _one_budget_lp(c, d, valid):
    """LP bound of groups i.. under one cost, as (base cost suffix, base objective suffix, hull
    segment rows, cumulative cost, cumulative objective) for np.interp per state."""
    hull = _Hull(c, d, valid)
    rows = np.arange(c.shape[0])
    base_c = c[rows, hull.base]
    base_d = d[rows, hull.base]
    return hull, np.r_[np.cumsum(base_c[::-1])[::-1], 0.0], np.r_[np.cumsum(base_d[::-1])[::-1], 0.0]


def _core(ca, cb, d, valid, excess, room_a, room_b, slack_a, slack_b, target_d, rc_offset, deadline, beam=None):
    """Least-objective choice of the core groups with Σca ≤ room_a + slack_a and Σcb ≤ room_b +
    slack_b, if its objective is below `target_d`. `rc_offset + Σ excess` of a partial choice is
    L(λ) for every completion of it, in core-objective terms (so the bound needs no incumbent).
    ("optimal", choice), ("none", None) when no such choice exists, or ("unavailable", None).
    With `beam`, at most that many states (least lower bound first) go on to the next group:
    ("beam", choice or None) then, unless no cut was needed (the answer is exact)."""
    k = ca.shape[0]
    hull_a, suf_ca, suf_da = _one_budget_lp(ca, d, valid)
    hull_b, suf_cb, suf_db = _one_budget_lp(cb, d, valid)
    ex = np.where(valid, excess, np.inf)
    sa, sb, sd, sr = np.zeros(1), np.zeros(1), np.zeros(1), np.zeros(1)
    parents: list[np.ndarray] = []
    options: list[np.ndarray] = []
    total = 0
    cut = False
    for i in range(k):
        if deadline is not None and time.perf_counter() > deadline:
            return "unavailable", None
        opts = np.flatnonzero(valid[i])
        na = (sa[:, None] + ca[i, opts][None, :]).ravel()
        nb = (sb[:, None] + cb[i, opts][None, :]).ravel()
        nd = (sd[:, None] + d[i, opts][None, :]).ravel()
        nr = (sr[:, None] + ex[i, opts][None, :]).ravel()
        par = np.repeat(np.arange(sa.size), opts.size)
        opt = np.tile(opts, sa.size)
        left_a = room_a + slack_a - na - suf_ca[i + 1]
        left_b = room_b + slack_b - nb - suf_cb[i + 1]
        # Lower bounds on the core objective of any completion: by L(λ), and by each budget's LP.
        lb = nr + rc_offset
        for hull, left, suf_d in ((hull_a, left_a, suf_da), (hull_b, left_b, suf_db)):
            later = hull.row > i
            xs = np.r_[0.0, np.cumsum(hull.dc[later])]
            ys = np.r_[0.0, np.cumsum(hull.dd[later])]
            lb = np.maximum(lb, nd + suf_d[i + 1] + np.interp(np.maximum(left, 0.0), xs, ys))
        ok = (left_a >= 0) & (left_b >= 0) & (lb < target_d)
        na, nb, nd, nr, lb, par, opt = na[ok], nb[ok], nd[ok], nr[ok], lb[ok], par[ok], opt[ok]
        if na.size == 0:
            return ("beam" if cut else "none"), None
        keep = _undominated3(na, nb, nd)
        if beam is not None and keep.size > beam:
            keep = keep[np.argpartition(lb[keep], beam)[:beam]]
            cut = True
        sa, sb, sd, sr = na[keep], nb[keep], nd[keep], nr[keep]
        parents.append(par[keep])
        options.append(opt[keep])
        total += sa.size
        if sa.size > MAX_STATES or total > 20 * MAX_STATES:
            return "unavailable", None
    s = int(np.argmin(sd))
    if not sd[s] < target_d:
        return ("beam" if cut else "none"), None
    choice = np.empty(k, dtype=np.intp)
    for i in range(k - 1, -1, -1):
        choice[i] = options[i][s]
        s = parents[i][s]
    return ("beam" if cut else "optimal"), choice


def _undominated3(a: np.ndarray, b: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Indices of states to keep: a state goes when an earlier one in (a, b, d) order costs no more
    in b and has no more d (so no more in all three). Checked against three witnesses per state
    (its predecessor, the earlier least-d and the earlier least-b state): dominated states may
    survive, undominated ones never go. Returned in sorted order."""
    order = np.lexsort((d, b, a))
    a, b, d = a[order], b[order], d[order]
    n = a.size
    gone = np.zeros(n, dtype=bool)
    if n > 1:
        gone[1:] |= (b[:-1] <= b[1:]) & (d[:-1] <= d[1:])
        for key in (d, b):
            run = np.minimum.accumulate(key)
            new = np.r_[True, key[1:] < run[:-1]]
            arg = np.maximum.accumulate(np.where(new, np.arange(n), 0))
            t = arg[:-1]
            gone[1:] |= (b[t] <= b[1:]) & (d[t] <= d[1:])
    return order[~gone]


class Mckp2Backend(Backend):
    """The exact method for up to two budgets (see the module docstring); zero or one budget is
    the one-budget knapsack."""

    name = "mckp2"
    max_budgets = 2

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
        if len(limits) > 2:
            raise ValueError("the mckp2 back-end takes at most two budgets")
        if len(limits) < 2:
            if limits:
                (name, limit), = limits.items()
                cost = compiled.cost(name)
            else:
                cost, limit = np.zeros(compiled.valid.shape), 0.0
            return Knapsack(cost, objective, compiled.valid).solve(limit, time_limit=time_limit, start=start)
        (na, la), (nb, lb) = limits.items()
        two = TwoBudget(compiled.cost(na), compiled.cost(nb), objective, compiled.valid)
        return two.solve(la, lb, start=start, time_limit=time_limit)
