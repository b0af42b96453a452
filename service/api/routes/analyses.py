"""/v1/analyses: start a sensitivity analysis, follow it, read its table, ask it for plans."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from sqlalchemy.orm import Session

from service.core import catalog, compat, planning
from service.storage import shards, store
from service.api.deps import get_queue, get_session, get_settings
from service.api.jobs_http import submit_job
from service.api.limits import check_active_jobs
from service.api.responses import analysis_out, plan_out, shard_out
from service.api.security import Caller, Principal, get_caller, get_principal
from service.api.schemas import AnalysisIn, AnalysisOut, PlanIn, PlanOut, TableOut, WarningOut
from service.config import Settings
from service.storage.db.models import AnalysisRecord, PlanRecord
from service.errors import InvalidInput
from service.jobs import JobQueue

router = APIRouter(prefix="/v1/analyses", tags=["analyses"])


@router.post("", status_code=202, response_model=AnalysisOut)
def create_analysis(
    body: AnalysisIn,
    response: Response,
    session: Session = Depends(get_session),
    queue: JobQueue = Depends(get_queue),
    settings: Settings = Depends(get_settings),
    principal: Principal = Depends(get_principal),
    caller: Caller = Depends(get_caller),
) -> AnalysisOut:
    check_active_jobs(session, principal=principal, limit=settings.max_active_jobs_per_token)
    model = store.get_model(session, model_id=body.model_id, owned_by=caller.sees)
    dataset = (store.get_dataset(session, dataset_id=body.dataset_id, owned_by=caller.sees)
               if body.dataset_id else None)
    candidates = catalog.check_candidates(body.candidates)
    catalog.check_metric(body.metric, has_dataset=dataset is not None, options=body.options)
    catalog.check_shards(body.metric, body.options, dataset, model.inputs)
    compat.check_dataset_fits(model.inputs, dataset, body.options)  # before anything is queued
    compat.check_latency_table_fits(model.layers, candidates, body.options)
    rec = AnalysisRecord(
        model_id=body.model_id, dataset_id=body.dataset_id, candidates=candidates, metric=body.metric,
        seed=body.seed, options=dict(body.options), status="queued", progress=0.0, message="queued", attempts=0,
        token_id=principal.token_id, owned_by=caller.owner,
    )
    submit_job(session, queue, response, "analysis", rec, "/v1/analyses")
    return analysis_out(rec)


@router.get("", response_model=list[AnalysisOut])
def list_analyses(
    limit: int = 100, session: Session = Depends(get_session), caller: Caller = Depends(get_caller)
) -> list[AnalysisOut]:
    """The caller's analyses, newest first (an admin's: everyone's)."""
    if not 1 <= limit <= 1000:
        raise InvalidInput("limit", "must be between 1 and 1000")
    return [analysis_out(r) for r in store.list_analyses(session, limit=limit, owned_by=caller.sees)]


@router.get("/{analysis_id}", response_model=AnalysisOut)
def get_analysis(
    analysis_id: str, session: Session = Depends(get_session), caller: Caller = Depends(get_caller)
) -> AnalysisOut:
    rec = store.get_analysis(session, analysis_id=analysis_id, owned_by=caller.sees)
    out = analysis_out(rec)
    parts = shards.shards_of(session, analysis_id=rec.id)
    if parts:
        out.shards = [shard_out(part) for part in parts]
    if rec.status == "succeeded":
        stored = planning.problem_of(rec)
        out.warnings = [WarningOut.model_validate(w) for w in getattr(stored, "warnings", ())]
    return out


@router.get("/{analysis_id}/table", response_model=TableOut)
def get_table(
    analysis_id: str, session: Session = Depends(get_session), caller: Caller = Depends(get_caller)
) -> TableOut:
    rec = store.get_succeeded_analysis(session, analysis_id=analysis_id, owned_by=caller.sees)
    return TableOut(analysis_id=rec.id, metric=rec.metric, warnings=(rec.table or {}).get("warnings") or [],
                    **catalog.table_view(rec.table))


@router.post("/{analysis_id}/plans", status_code=201, response_model=PlanOut)
def create_plan(
    analysis_id: str, body: PlanIn, response: Response, session: Session = Depends(get_session),
    caller: Caller = Depends(get_caller),
) -> PlanOut:
    rec = store.get_succeeded_analysis(session, analysis_id=analysis_id, owned_by=caller.sees)
    problem = planning.problem_of(rec)
    plan, budget = planning.requested_plan(
        problem, budget=None if body.budget is None else body.budget.model_dump(exclude_none=True),
        assignment=body.assignment, backend=body.backend, time_limit=body.time_limit_s,
    )
    prec = PlanRecord(
        analysis_id=rec.id, budget=budget, assignment=dict(plan.assignment), total_bytes=plan.costs.get("bytes", 0.0),
        average_bits=plan.average_bits(problem), predicted_damage=plan.damage, costs=dict(plan.costs),
        solver_status=plan.status, gap=plan.gap, backend=plan.backend, solve_seconds=plan.solve_seconds,
        tolerance=planning.finite(plan.tolerance), bound=planning.finite(plan.bound),
        owned_by=caller.owner,
    )
    store.save(session, prec)
    response.headers["Location"] = f"/v1/plans/{prec.id}"
    return plan_out(prec, problem)


@router.get("/{analysis_id}/plans", response_model=list[PlanOut])
def list_plans(
    analysis_id: str, session: Session = Depends(get_session), caller: Caller = Depends(get_caller)
) -> list[PlanOut]:
    rec = store.get_succeeded_analysis(session, analysis_id=analysis_id, owned_by=caller.sees)
    problem = planning.problem_of(rec)
    return [plan_out(p, problem) for p in store.list_plans(session, analysis_id=analysis_id, owned_by=caller.sees)]
