"""/v1/plans: a stored plan with its choice per decision unit and the layers each applies to."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from sqlalchemy.orm import Session

from service.core import planning
from service.storage import store
from service.api.deps import get_session
from service.api.security import Caller, get_caller
from service.api.responses import plan_out
from service.api.schemas import PlanOut

router = APIRouter(prefix="/v1/plans", tags=["plans"])


@router.get("/{plan_id}", response_model=PlanOut)
def get_plan(plan_id: str, session: Session = Depends(get_session), caller: Caller = Depends(get_caller)) -> PlanOut:
    rec = store.get_plan(session, plan_id=plan_id, owned_by=caller.sees)
    analysis = store.get_analysis(session, analysis_id=rec.analysis_id)
    return plan_out(rec, planning.problem_of(analysis))
