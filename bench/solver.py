"""Solver benchmark: exact plans and 100-point frontiers against a plain PuLP + CBC model per point.

Also the degenerate 500×5 table (many equal costs) whose frontier the previous branch and bound
took minutes over, with byte costs (lattice DP) and float latencies (Pareto core DP), against the
previous method kept selectable (`solver.backends._mckp.CORE_DP = False`).

And two budgets (issue 16) on the Llama-70B-shaped 560×8 table with bytes and latency_ms: the
100-point two-budget frontiers (frontier_2d on a 10 × 10 grid of limits, and a 100-point bytes
frontier under a latency limit) against the same points solved one by one as MIPs (bitplan's own
HiGHS layout in-process, no PuLP, so the fastest MIP here), sampled and extrapolated; every sampled
point's damage compared.

Run: python bench/solver.py [--cbc-sample 10] [--skip-highs] [--deg-points 200] [--old-deg-points 3]
                            [--mip-sample 20] [--two-only]
Prints one table. Single process, single thread; a few minutes at most.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from solver import Budget, Option, Problem, Unit, average_bits_budget, frontier, frontier_2d, solve  # noqa: E402
from solver._compiled import compile_problem  # noqa: E402
from solver.backends import get_backend  # noqa: E402
from tests.utils.llm_tables import LLAMA70B_BITS, synthetic_llm  # noqa: E402

def degenerate(n_units: int, seed: int = 1, bits: tuple[int, ...] = (2, 3, 4, 6, 8)) -> Problem:
    """The frontier issue's shape: layers of only 256, 1024 or 4096 weights (integer byte costs
    shared by many layers), lognormal sensitivities, damage ∝ 4^-bits; plus a latency cost that is
    one random float per (size, bits), equally shared but on no lattice."""
    rng = np.random.default_rng(seed)
    sizes = (256, 1024, 4096)
    latency = {w: {b: float(rng.uniform(0.5, 1.5) * w * b * 1e-6) for b in bits} for w in sizes}
    units = []
    for i in range(n_units):
        w = int(rng.choice(sizes))
        sens = rng.lognormal(0.0, 1.5)
        opts = tuple(
            Option(f"int{b}", float(sens * 4.0 ** (-b)), {"bytes": w * b / 8 + 2 * w / 64, "latency_ms": latency[w][b]})
            for b in bits
        )
        units.append(Unit(f"layer{i}", w, opts))
    return Problem(tuple(units))


def pulp_cbc(problem: Problem, limit: float) -> tuple[float, float]:
    """The plain baseline: build a PuLP model for one budget and solve it with CBC (gap 0)."""
    import pulp

    started = time.perf_counter()
    prob = pulp.LpProblem("plain", pulp.LpMinimize)
    x = {
        (u.name, o.candidate): pulp.LpVariable(f"x_{i}_{j}", cat=pulp.LpBinary)
        for i, u in enumerate(problem.units)
        for j, o in enumerate(u.options)
    }
    prob += pulp.lpSum(o.damage * x[u.name, o.candidate] for u in problem.units for o in u.options)
    for u in problem.units:
        prob += pulp.lpSum(x[u.name, o.candidate] for o in u.options) == 1
    prob += pulp.lpSum(o.costs["bytes"] * x[u.name, o.candidate] for u in problem.units for o in u.options) <= limit
    prob.solve(pulp.PULP_CBC_CMD(msg=False, gapRel=0, threads=1))
    assert pulp.LpStatus[prob.status] == "Optimal", pulp.LpStatus[prob.status]
    damage = sum(o.damage for u in problem.units for o in u.options if x[u.name, o.candidate].varValue > 0.5)
    return time.perf_counter() - started, damage


def main() -> None:
    warnings.simplefilter("ignore", DeprecationWarning)  # PuLP 3's notices about its 4.0 API
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100)
    parser.add_argument("--cbc-sample", type=int, default=10, help="frontier points solved by PuLP+CBC")
    parser.add_argument("--skip-highs", action="store_true", help="skip the HiGHS reference on 10,000 units")
    parser.add_argument("--deg-points", type=int, default=200, help="frontier points on the degenerate 500×5 table")
    parser.add_argument("--old-deg-points", type=int, default=3, help="points the previous B&B solves there (0: skip)")
    parser.add_argument("--mip-sample", type=int, default=20, help="two-budget frontier points also solved as MIPs")
    parser.add_argument("--two-only", action="store_true", help="only the two-budget section")
    args = parser.parse_args()
    rows: list[tuple[str, str]] = []

    def row(name: str, value: str) -> None:
        rows.append((name, value))
        print(f"  {name:<58} {value}", flush=True)

    print("bitplan solver benchmark (single thread)")
    two_budgets(row, args.mip_sample)
    if args.two_only:
        return
    p = synthetic_llm(560, (2, 3, 4, 5, 6, 8), latency=False)
    budget = average_bits_budget(p, 4.25)
    solve(p, [budget])  # warm imports
    t = time.perf_counter()
    plan = solve(p, [budget])
    ours_one = time.perf_counter() - t
    cbc_one, cbc_dmg = pulp_cbc(p, budget.limit)
    row("560×6, one plan @4.25 bits: bitplan (auto → mckp)", f"{ours_one * 1e3:8.1f} ms  damage {plan.damage:.9g}")
    row("560×6, one plan @4.25 bits: plain PuLP+CBC", f"{cbc_one * 1e3:8.1f} ms  damage {cbc_dmg:.9g}")
    row("  ratio", f"{cbc_one / ours_one:8.1f}×")

    t = time.perf_counter()
    front = frontier(p, "bytes", args.points)
    ours_front = time.perf_counter() - t
    budgets = np.linspace(front.points[0].costs["bytes"], front.points[-1].costs["bytes"], args.points)
    sample = np.unique(np.linspace(0, args.points - 1, min(args.cbc_sample, args.points)).round().astype(int))
    cbc_times, worst, better = [], 0.0, 0
    for i in sample:
        limit = float(budgets[i])
        secs, dmg = pulp_cbc(p, limit)
        cbc_times.append(secs)
        ours = min((q for q in front.points if q.costs["bytes"] <= limit * (1 + 1e-10)), key=lambda q: q.damage)
        rel = (ours.damage - dmg) / abs(dmg)
        worst = max(worst, rel)
        better += rel < -1e-9
    cbc_front = float(np.mean(cbc_times)) * args.points
    row(f"560×6, {args.points}-point exact frontier: bitplan", f"{ours_front * 1e3:8.1f} ms  ({len(front.points)} non-dominated points, all status optimal: {all(q.status == 'optimal' for q in front.points)})")
    row(
        f"560×6, {args.points}-point frontier: PuLP+CBC per point",
        f"{cbc_front * 1e3:8.1f} ms  (extrapolated from {len(sample)} sampled points, mean {np.mean(cbc_times) * 1e3:.0f} ms)",
    )
    row("  ratio", f"{cbc_front / ours_front:8.1f}×")
    row(
        "  check at sampled budgets: (bitplan − CBC) / CBC damage",
        f"max {worst:+.2e}  (≤ 1e-6 required; bitplan strictly better at {better} of {len(sample)})",
    )

    # Before/after on the same run: the pure branch and bound (knapsack.CORE_DP off, per-budget
    # frontier) is the previous method, kept selectable for exactly this comparison.
    from solver.backends import _mckp

    def old_way(fn):
        _mckp.CORE_DP = False
        try:
            t = time.perf_counter()
            out = fn()
            return time.perf_counter() - t, out
        finally:
            _mckp.CORE_DP = True

    old_front, old_points = old_way(lambda: frontier(p, "bytes", args.points, backend="mckp"))
    same = max(abs(a.damage - b.damage) / abs(b.damage) for a, b in zip(front.points, old_points.points))
    row(f"560×6, {args.points}-point frontier: previous B&B per budget", f"{old_front * 1e3:8.1f} ms  ({old_front / ours_front:.1f}× slower; max rel. damage difference {same:.1e})")

    # The degenerate table of the issue: 500 layers of only three sizes (many equal byte costs).
    deg = degenerate(500)
    t = time.perf_counter()
    deg_front = frontier(deg, "bytes", args.deg_points)
    deg_secs = time.perf_counter() - t
    row(
        f"500×5 degenerate, {args.deg_points}-point exact frontier: bitplan",
        f"{deg_secs * 1e3:8.1f} ms  ({len(deg_front.points)} points via {deg_front.points[0].backend}, all optimal: {all(q.status == 'optimal' for q in deg_front.points)})",
    )
    if args.old_deg_points:
        old_deg, _ = old_way(lambda: frontier(deg, "bytes", args.old_deg_points, backend="mckp"))
        per = old_deg / args.old_deg_points
        row(
            f"500×5 degenerate: previous B&B, {args.old_deg_points} points",
            f"{old_deg * 1e3:8.1f} ms  (≈ {per * args.deg_points:.0f} s for {args.deg_points}: {per * args.deg_points / deg_secs:.0f}×)",
        )
    mid = Budget("bytes", 0.5 * (deg_front.points[0].costs["bytes"] + deg_front.points[-1].costs["bytes"]))
    t = time.perf_counter()
    deg_one = solve(deg, [mid])
    row("500×5 degenerate, one plan (mid budget): bitplan", f"{(time.perf_counter() - t) * 1e3:8.1f} ms  status {deg_one.status}")
    t = time.perf_counter()
    lat_front = frontier(deg, "latency_ms", args.deg_points)
    lat_secs = time.perf_counter() - t
    row(
        f"500×5 degenerate float latencies, {args.deg_points}-point frontier",
        f"{lat_secs * 1e3:8.1f} ms  (no lattice: per-budget B&B root + Pareto core DP)",
    )
    if args.old_deg_points:
        t = time.perf_counter()
        frontier(deg, "latency_ms", 20)
        new20 = time.perf_counter() - t
        old_lat, _ = old_way(lambda: frontier(deg, "latency_ms", 20, backend="mckp"))
        row("500×5 degenerate float latencies, 20 points: now / previous B&B", f"{new20 * 1e3:8.1f} ms / {old_lat * 1e3:.1f} ms  ({old_lat / new20:.0f}×)")

    big = synthetic_llm(10_000, (2, 3, 4, 5, 6, 7, 8, 16), seed=1, latency=False)
    b = average_bits_budget(big, 4.3)
    t = time.perf_counter()
    big_plan = solve(big, [b])
    ours_big = time.perf_counter() - t
    row("10,000×8, one plan @4.3 bits: bitplan (auto → mckp)", f"{ours_big * 1e3:8.1f} ms  status {big_plan.status}, damage {big_plan.damage:.12g}")
    if not args.skip_highs:
        t = time.perf_counter()
        ref = solve(big, [b], backend="highs", time_limit=60)
        row("10,000×8, one plan @4.3 bits: HiGHS ILP (reference)", f"{(time.perf_counter() - t) * 1e3:8.1f} ms  status {ref.status}, damage {ref.damage:.12g}")
        row("  (bitplan − HiGHS) / HiGHS damage", f"{(big_plan.damage - ref.damage) / ref.damage:+.2e}")


def mip(compiled, limits: dict[str, float]) -> tuple[float, float, str]:
    """One point as a MIP: HiGHS on bitplan's layout, unchecked (what the back-end alone says)."""
    t = time.perf_counter()
    out = get_backend("highs", len(limits)).solve(compiled, compiled.damage, limits)
    return time.perf_counter() - t, compiled.totals(out.choice)[0], out.status


def best_within(points, limits: dict[str, float]) -> float:
    """A frontier's optimum at `limits`: the least damage of its points that fit (each point is
    optimal at its own costs and dropped points are dominated by kept ones)."""
    fit = [q.damage for q in points if all(q.costs[n] <= v * (1 + 1e-10) for n, v in limits.items())]
    return min(fit)


def compare(row, label: str, seconds: float, points, cells: list[dict[str, float]], sample: int, compiled) -> None:
    pick = np.unique(np.linspace(0, len(cells) - 1, min(sample, len(cells))).round().astype(int))
    times, worse, better, claimed, gain, worst = [], 0, 0, 0, 0.0, 0.0
    for i in pick:
        secs, damage, status = mip(compiled, cells[i])
        times.append(secs)
        ours = best_within(points, cells[i])
        rel = (ours - damage) / abs(damage)
        worst = max(worst, abs(rel))
        worse += rel > 1e-12
        gain = min(gain, rel)
        better += rel < -1e-12
        claimed += rel < -1e-12 and status == "optimal"
    per_point = float(np.mean(times))
    optimal = all(q.status == "optimal" for q in points)
    tol = max(q.tolerance for q in points)
    abs_tol = max(q.tolerance * abs(q.damage) for q in points)
    row(
        f"{label}: bitplan",
        f"{seconds:8.2f} s  ({len(points)} non-dominated plans, all optimal: {optimal}; tolerance ≤ {tol:.1e} relative, ≤ {abs_tol:.1e} absolute)",
    )
    row(
        f"{label}: MIP (HiGHS) per point",
        f"{per_point * len(cells):8.2f} s  (extrapolated from {len(pick)} of {len(cells)} points, mean {per_point * 1e3:.0f} ms)",
    )
    row("  ratio", f"{per_point * len(cells) / seconds:8.1f}×")
    row(
        "  sampled points: max |bitplan − MIP| / MIP damage",
        f"{worst:.2e}  (bitplan worse at {worse} of {len(pick)}, better at {better}"
        + (f", by up to {-gain:.2e}, {claimed} of those called optimal by the MIP)" if better else ")"),
    )


def two_budgets(row, sample: int) -> None:
    p = synthetic_llm(560, LLAMA70B_BITS, seed=0)
    compiled = compile_problem(p)
    best = solve(p, [])
    # frontier_2d's grid: each cost from its least achievable value to its value in the least-damage plan
    lo = {c: sum(min(o.costs[c] for o in u.options) for u in p.units) for c in ("bytes", "latency_ms")}
    axes = {c: np.linspace(lo[c], best.costs[c], 10) for c in lo}
    t = time.perf_counter()
    front = frontier_2d(p, ("bytes", "latency_ms"), (10, 10))
    secs = time.perf_counter() - t
    cells = [{"bytes": float(a), "latency_ms": float(b)} for a in axes["bytes"] for b in axes["latency_ms"]]
    cells = [c for c in cells if any(all(q.costs[n] <= v * (1 + 1e-10) for n, v in c.items()) for q in front.points)]
    compare(row, f"560×8 bytes+latency, {len(cells)}-cell frontier_2d", secs, front.points, cells, sample, compiled)

    lat = Budget("latency_ms", 0.5 * best.costs["latency_ms"])
    t = time.perf_counter()
    front = frontier(p, "bytes", 100, budgets=[lat])
    secs = time.perf_counter() - t
    binding = sum(q.costs["latency_ms"] > (1 - 1e-4) * lat.limit for q in front.points)
    grid = np.linspace(front.points[0].costs["bytes"], front.points[-1].costs["bytes"], 100)
    cells = [{"bytes": float(b), "latency_ms": lat.limit} for b in grid]
    label = f"560×8, 100-point bytes frontier, latency ≤ {lat.limit:.0f} ms ({binding} points bind it)"
    compare(row, label, secs, front.points, cells, sample, compiled)


if __name__ == "__main__":
    main()
