"""Exact core solve for any (float) costs: Pareto-state DP with Lagrangian bound pruning.

Used by the knapsack B&B (_mckp.py) on the core its root leaves after reduced-cost fixing, when the
costs lie on no lattice (measured latencies, say). Groups are added one at a time to a list of
partial plans (cost, objective); a partial plan is dropped when another costs no more and has no
more objective (Nemhauser–Ullmann), or when its objective plus the LP bound of the groups still to
come at the budget left cannot beat the incumbent (the pruning of Pisinger's core algorithms). The
LP bound of a set of groups as a function of the budget left is their hull segments taken in order
of efficiency: a convex piecewise-linear function, evaluated with np.interp for all states at once.

On tables with many equal costs, where branching on one group at a time explores thousands of
symmetric nodes, the state list merges them: equal costs collapse into one state. Exact to the
same relative 1e-10 objective tolerance as the B&B; gives up (returns None) past MAX_STATES
partial plans so the caller can branch instead.
"""

from __future__ import annotations

import numpy as np

MAX_STATES = 400_000


def solve_core(
    c: np.ndarray,
    d: np.ndarray,
    valid: np.ndarray,
    hull,
    budget: float,
    slack: float,
    incumbent: float,
    otol: float,
) -> tuple[str, np.ndarray | None]:
    """Least objective over the core with total cost ≤ budget + slack, if below `incumbent − otol`.

    `hull` is solver.backends._mckp._Hull of exactly (c, d, valid). Returns ("optimal", choice),
    ("none", None) when no plan beats the incumbent, or ("unavailable", None) past MAX_STATES.
    """
    k = c.shape[0]
    rows = np.arange(k)
    base_c = c[rows, hull.base]
    base_d = d[rows, hull.base]
    suffix_c = np.r_[np.cumsum(base_c[::-1])[::-1], 0.0]  # cheapest cost of groups i.. (i = 0..k)
    suffix_d = np.r_[np.cumsum(base_d[::-1])[::-1], 0.0]
    seg_row, seg_dc, seg_dd = hull.row, hull.dc, hull.dd
    target = incumbent - otol
    sc, sd = np.zeros(1), np.zeros(1)
    parents: list[np.ndarray] = []
    options: list[np.ndarray] = []
    total_states = 0
    for i in range(k):
        opts = np.flatnonzero(valid[i])
        cc = (sc[:, None] + c[i, opts][None, :]).ravel()
        cd = (sd[:, None] + d[i, opts][None, :]).ravel()
        par = np.repeat(np.arange(sc.size), opts.size)
        opt = np.tile(opts, sc.size)
        # LP bound of groups i+1.. at the budget they have left
        left = budget + slack - cc - suffix_c[i + 1]
        later = seg_row > i
        xs = np.r_[0.0, np.cumsum(seg_dc[later])]
        ys = np.r_[0.0, np.cumsum(seg_dd[later])]
        bound = cd + suffix_d[i + 1] + np.interp(np.maximum(left, 0.0), xs, ys)
        ok = (left >= 0) & (bound < target)
        cc, cd, par, opt = cc[ok], cd[ok], par[ok], opt[ok]
        if cc.size == 0:
            return "none", None
        order = np.lexsort((cd, cc))
        cc, cd, par, opt = cc[order], cd[order], par[order], opt[order]
        run = np.minimum.accumulate(cd)
        keep = np.r_[True, cd[1:] < run[:-1]]
        sc, sd = cc[keep], cd[keep]
        parents.append(par[keep])
        options.append(opt[keep])
        total_states += sc.size
        if sc.size > MAX_STATES or total_states > 20 * MAX_STATES:
            return "unavailable", None
    best = int(np.argmin(sd))
    if not sd[best] < target:
        return "none", None
    choice = np.empty(k, dtype=np.intp)
    s = best
    for i in range(k - 1, -1, -1):
        choice[i] = options[i][s]
        s = parents[i][s]
    return "optimal", choice
