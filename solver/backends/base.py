"""The solver back-end plug-in point."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from solver._compiled import CompiledProblem

OutcomeStatus = Literal["optimal", "time_limit", "incomplete", "infeasible", "no_solution"]


@dataclass(frozen=True)
class Outcome:
    """What a back-end found: one option index per group (None when it has no plan), and a proven
    lower bound on the objective (meaningful for "time_limit"; equal to the value when optimal)."""

    choice: np.ndarray | None
    status: OutcomeStatus
    bound: float


class Backend(ABC):
    """Minimises a separable objective over a CompiledProblem under upper limits on named costs.

    Rules:
    - `name` is unique in the registry; `max_budgets` is how many limits it accepts (None: any).
    - `available()` is cheap, imports the optional library lazily and never raises.
    - `solve` must not mutate the CompiledProblem, the objective or the limits, keeps no state between calls
      (one instance serves concurrent threads) and returns "optimal" only with a proof.
    - `objective[g, j]` is finite for every valid slot; invalid slots must never be chosen.
    - `start` is an optional feasible choice to warm-start from; it may be ignored.
    """

    name: ClassVar[str]
    max_budgets: ClassVar[int | None] = None

    @abstractmethod
    def available(self) -> bool:
        """True when the library it needs can be imported."""

    @abstractmethod
    def solve(
        self,
        compiled: CompiledProblem,
        objective: np.ndarray,
        limits: Mapping[str, float],
        *,
        time_limit: float | None = None,
        start: np.ndarray | None = None,
    ) -> Outcome:
        """Minimise sum(objective[g, choice[g]]) subject to each cost's total ≤ its limit."""

    def applies(self, n_budgets: int) -> bool:
        return self.max_budgets is None or n_budgets <= self.max_budgets


def single_budget(
    compiled: CompiledProblem, limits: Mapping[str, float], backend: str
) -> tuple[np.ndarray, float]:
    """The one limited cost and its limit for a back-end that takes at most one budget (no budget:
    a zero cost under a zero limit)."""
    if len(limits) > 1:
        raise ValueError(f"the {backend} back-end takes at most one budget")
    if limits:
        (name, limit), = limits.items()
        return compiled.cost(name), limit
    return np.zeros(compiled.valid.shape), 0.0
