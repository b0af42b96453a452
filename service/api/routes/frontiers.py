"""/v1/analyses/{id}/frontier: the exact damage-versus-cost front of an analysis, computed once, stored."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from service import planning, store
from service.api.deps import get_session
from service.api.routes.analyses import succeeded_analysis
from service.api.security import Caller, get_caller
from service.db.models import FrontierRecord
from service.errors import InvalidInput
from service.frontiers import compute_frontier

router = APIRouter(prefix="/v1/analyses", tags=["frontiers"])


@router.get("/{analysis_id}/frontier")
def get_frontier(
    analysis_id: str,
    cost: str = Query("bytes", max_length=50, description="The cost on the x axis (bytes, bops, latency_ms...)."),
    points: int = Query(50, ge=2, le=1000, description="Budgets on the grid from the cheapest to the dearest plan."),
    session: Session = Depends(get_session),
    caller: Caller = Depends(get_caller),
) -> JSONResponse:
    rec = succeeded_analysis(session, analysis_id, caller)
    stored = store.find_frontier(session, analysis_id=rec.id, cost=cost, points=points)
    if stored is None:
        problem = planning.problem_for(rec.id, lambda: rec.problem)
        if cost not in problem.cost_names:
            raise InvalidInput("cost", f"this analysis has no cost {cost!r}; it has {list(problem.cost_names)}")
        data = compute_frontier(problem, cost=cost, points=points)
        # The analysis's owner's, whoever asked (an admin's request fills the owner's cache).
        stored = store.save_frontier(session, frontier=FrontierRecord(
            analysis_id=rec.id, cost=cost, points_requested=points, data=data, solve_seconds=data["solve_seconds"],
            owned_by=rec.owned_by))
    # Plain JSON straight out: the payload is already JSON-shaped, and FastAPI's encoder walking a
    # million choice indices of a 500-layer, 200-point front would cost more than the query.
    return JSONResponse({"analysis_id": rec.id, "points_requested": stored.points_requested, **stored.data})
