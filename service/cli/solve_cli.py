"""`bitplan solve`: the solver on a user's own problem file, with no server and no model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from service.core.frontiers import compute_frontier
from solver import InfeasibleBudget, SolverError, explain_infeasible, parse_budget, problem_from_dict, solve
from solver._budget import asked_budget_texts


def _load(path: str) -> dict:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    return json.loads(text)


def run_solve(path: str, *, budgets: list[str], frontier_points: int | None, cost: str, backend: str,
              as_json: bool) -> int:
    try:
        problem = problem_from_dict(_load(path))
        # The solver's one parser, as the API's: the rules on the whole budget (a word twice, avg_bits
        # with bytes), then each text against the problem, its errors quoting the text as typed.
        asked = asked_budget_texts(budgets) if budgets else {}
        parsed = [parse_budget(text, problem) for text in budgets]
    except (OSError, json.JSONDecodeError, ValueError, SolverError) as exc:
        print(f"bitplan solve: {exc}", file=sys.stderr)
        return 2
    if not parsed and frontier_points is None:
        print("bitplan solve: give --budget COST=LIMIT and/or --frontier N", file=sys.stderr)
        return 2
    out: dict = {}
    try:
        if parsed:
            try:
                plan = solve(problem, parsed, backend=backend)
            except InfeasibleBudget as exc:
                raise explain_infeasible(exc, problem, asked) from exc
            out["plan"] = {"assignment": plan.assignment, "damage": plan.damage, "costs": plan.costs,
                           "status": plan.status, "gap": plan.gap, "tolerance": plan.tolerance,
                           "backend": plan.backend, "solve_seconds": plan.solve_seconds}
        if frontier_points is not None:
            out["frontier"] = compute_frontier(problem, cost=cost, points=frontier_points, backend=backend)
    except InfeasibleBudget as exc:
        print(f"bitplan solve: infeasible: {exc}", file=sys.stderr)
        return 1
    except (SolverError, ValueError) as exc:
        print(f"bitplan solve: {exc}", file=sys.stderr)
        return 2
    if as_json:
        json.dump(out, sys.stdout, indent=2)
        print()
        return 0
    if "plan" in out:
        p = out["plan"]
        print(f"{'unit':<40} candidate")
        for unit in problem.units:
            print(f"{unit.name:<40} {p['assignment'][unit.name]}")
        costs = ", ".join(f"{k} {v:.6g}" for k, v in p["costs"].items())
        proof = f"tolerance {p['tolerance']:.2g}" if p["tolerance"] is not None else f"gap {p['gap']:.2g}"
        print(f"damage {p['damage']:.6g}; {costs}; {p['backend']} {p['status']} ({proof}) "
              f"in {p['solve_seconds'] * 1000:.1f} ms")
    if "frontier" in out:
        f = out["frontier"]
        print(f"\nfrontier over {cost}: {len(f['points'])} points in {f['solve_seconds']:.3f} s")
        print(f"{cost:>14} {'avg bits':>9} {'damage':>12} status")
        for pt in f["points"]:
            bits = f"{pt['average_bits']:.3f}" if "average_bits" in pt else "-"
            print(f"{pt['costs'][cost]:>14.6g} {bits:>9} {pt['damage']:>12.6g} {pt['status']}")
    return 0
