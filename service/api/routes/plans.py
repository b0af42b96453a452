"""/v1/plans: a stored plan with its per-layer choices."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from sqlalchemy.orm import Session

from service import planning, store
from service.api.deps import get_session
from service.api.security import Caller, get_caller
from service.api.schemas import LayerChoice, PlanOut
from service.db.models import PlanRecord
from solver import Problem

router = APIRouter(prefix="/v1/plans", tags=["plans"])


def plan_out(rec: PlanRecord, problem: Problem) -> PlanOut:
    layers = []
    for unit in problem.units:
        cand = rec.assignment[unit.name]
        opt = unit.option(cand)
        layers.append(LayerChoice(layer=unit.name, candidate=cand, damage=opt.damage, bytes=opt.costs.get("bytes", 0.0)))
    return PlanOut(
        id=rec.id, analysis_id=rec.analysis_id, budget=rec.budget, total_bytes=rec.total_bytes,
        average_bits=rec.average_bits, predicted_damage=rec.predicted_damage, costs=rec.costs,
        solver={"status": rec.solver_status, "gap": rec.gap, "tolerance": rec.tolerance, "bound": rec.bound,
                "backend": rec.backend, "solve_seconds": rec.solve_seconds},
        layers=layers, created_at=rec.created_at,
        links={"self": f"/v1/plans/{rec.id}", "analysis": f"/v1/analyses/{rec.analysis_id}"},
        **planning.plan_report(rec.id, problem, rec.budget, rec.assignment),
    )


@router.get("/{plan_id}", response_model=PlanOut)
def get_plan(plan_id: str, session: Session = Depends(get_session), caller: Caller = Depends(get_caller)) -> PlanOut:
    rec = store.get_plan(session, plan_id=plan_id, owned_by=caller.sees)
    analysis = store.get_analysis(session, analysis_id=rec.analysis_id)
    return plan_out(rec, planning.problem_for(analysis.id, lambda: analysis.problem))
