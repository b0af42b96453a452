"""/v1/analyses/{id}/frontier: the exact damage-versus-cost front of an analysis, computed once, stored."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from service.storage import store
from service.api.deps import get_session
from service.api.security import Caller, get_caller
from service.core.stored_frontiers import frontier_of

router = APIRouter(prefix="/v1/analyses", tags=["frontiers"])


@router.get("/{analysis_id}/frontier")
def get_frontier(
    analysis_id: str,
    cost: str = Query("bytes", max_length=50, description="The cost on the x axis (bytes, bops, latency_ms...)."),
    points: int = Query(50, ge=2, le=1000, description="Budgets on the grid from the cheapest to the dearest plan."),
    session: Session = Depends(get_session),
    caller: Caller = Depends(get_caller),
) -> JSONResponse:
    rec = store.get_succeeded_analysis(session, analysis_id=analysis_id, owned_by=caller.sees)
    stored = frontier_of(session, analysis=rec, cost=cost, points=points)
    # Plain JSON straight out: the payload is already JSON-shaped, and FastAPI's encoder walking a
    # million choice indices of a 500-layer, 200-point front would cost more than the query.
    return JSONResponse({"analysis_id": rec.id, "points_requested": stored.points_requested, **stored.data})
