"""Exceptions of the solver part. `SolverError` is the root; the API maps them to HTTP at its edge."""

from __future__ import annotations

from collections.abc import Mapping

from solver.registry import Unavailable


class SolverError(Exception):
    """Root of every error the solver raises on purpose."""


class ProblemError(SolverError, ValueError):
    """The problem itself is malformed (unknown unit in a tie, no options, non-finite damage...)."""


class InfeasibleBudget(SolverError):
    """No plan meets the budgets. `minimums` gives, per budgeted cost, the least any plan can reach
    alone; `violated` names the budgets that are below that minimum (empty when each is reachable
    on its own but not all together)."""

    def __init__(self, message: str, *, minimums: Mapping[str, float], violated: tuple[str, ...]):
        super().__init__(message)
        self.minimums = dict(minimums)
        self.violated = violated


class BackendUnavailable(SolverError, Unavailable):
    """A solver back-end was asked for by name (or "auto" needed one) but its library is not installed."""
