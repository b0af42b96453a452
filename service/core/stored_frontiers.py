"""An analysis's frontiers as the API serves them: computed on first request, stored, then read back.

Kept apart from service.core.frontiers (pure computation, also used by `bitplan solve` with no database)
so that the frontier route and the frontier evaluation route share one find-or-compute path.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from service.core import planning
from service.storage import store
from service.storage.db.models import AnalysisRecord, FrontierRecord
from service.errors import InvalidInput
from service.core.frontiers import compute_frontier


def frontier_of(session: Session, *, analysis: AnalysisRecord, cost: str, points: int) -> FrontierRecord:
    """The stored frontier of a succeeded analysis over `points` budgets of `cost`, computed and stored
    now when it is not there yet (InvalidInput naming `cost` when the analysis has no such cost)."""
    stored = store.find_frontier(session, analysis_id=analysis.id, cost=cost, points=points)
    if stored is not None:
        return stored
    problem = planning.problem_of(analysis)
    if cost not in problem.cost_names:
        raise InvalidInput("cost", f"this analysis has no cost {cost!r}; it has {list(problem.cost_names)}")
    data = compute_frontier(problem, cost=cost, points=points)
    # The analysis's owner's, whoever asked (an admin's request fills the owner's cache).
    return store.save_frontier(session, frontier=FrontierRecord(
        analysis_id=analysis.id, cost=cost, points_requested=points, data=data, solve_seconds=data["solve_seconds"],
        owned_by=analysis.owned_by))
