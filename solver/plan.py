"""The solver's output: one assignment of a candidate to every unit, with its totals and proof status."""

from __future__ import annotations

from dataclasses import dataclass

from solver.problem import Problem

STATUS_OPTIMAL = "optimal"
STATUS_TIME_LIMIT = "time_limit"
STATUS_HEURISTIC = "heuristic"
STATUS_FEASIBLE = "feasible"


@dataclass(frozen=True)
class Plan:
    """A plan and how much to trust it.

    status "optimal": no plan meeting the budgets has less damage than `damage − tolerance·|damage|`
    (`tolerance` is the relative tolerance of the proof; `gap` ≤ `tolerance`, 0 when the method
    is exact). An ILP back-end's own "optimal" is only passed on once bitplan has checked it
    against a bound it computed itself (the exact knapsack methods for up to two budgets).
    status "feasible": a plan meeting the budgets that an ILP back-end called optimal but bitplan
    could not confirm within `tolerance`; `bound` and `gap` are bitplan's own.
    status "time_limit": the best plan found before the limit; `bound` is a proven lower bound on the
    optimal damage and `gap` = (damage - bound) / max(|damage|, tiny).
    status "heuristic": a baseline (greedy, uniform); `bound` is still a proven lower bound on the best
    damage reachable within the plan's own cost, so `gap` says how far the baseline is from optimal.
    """

    assignment: dict[str, str]
    damage: float
    costs: dict[str, float]
    status: str
    gap: float
    bound: float
    backend: str
    solve_seconds: float
    tolerance: float | None = None

    def average_bits(self, problem: Problem) -> float:
        """Average bits per quantizable weight, scale overhead included (needs a "bytes" cost)."""
        total = problem.total_weights
        if total <= 0:
            raise ValueError("problem has no quantizable weights, average bits are undefined")
        return self.costs.get("bytes", 0.0) * 8.0 / total


def relative_gap(damage: float, bound: float) -> float:
    """Gap as MIP solvers report it, never negative."""
    return max(0.0, (damage - bound) / max(abs(damage), 1e-300))
