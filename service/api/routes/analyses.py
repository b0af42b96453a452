"""/v1/analyses: start a sensitivity analysis, follow it, read its table, ask it for plans."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from sqlalchemy.orm import Session

from service import catalog, compat, planning, store
from service.api.deps import get_queue, get_session, get_settings
from service.api.limits import check_active_jobs
from service.api.responses import plan_out
from service.api.security import Caller, Principal, get_caller, get_principal
from service.api.schemas import AnalysisIn, AnalysisOut, PlanIn, PlanOut, Progress, TableOut, WarningOut
from service.config import Settings
from service.db.models import AnalysisRecord, JobColumns, PlanRecord
from service.errors import Conflict, InvalidInput
from service.jobs import JobQueue

router = APIRouter(prefix="/v1/analyses", tags=["analyses"])


def analysis_out(rec: AnalysisRecord) -> AnalysisOut:
    base = f"/v1/analyses/{rec.id}"
    links = {"self": base}
    if rec.status == "succeeded":
        links.update(table=f"{base}/table", plans=f"{base}/plans")
    return AnalysisOut(
        id=rec.id, model_id=rec.model_id, dataset_id=rec.dataset_id, candidates=rec.candidates, metric=rec.metric,
        seed=rec.seed, options=rec.options, status=rec.status,
        progress=Progress(fraction=rec.progress, message=rec.message), error=rec.error, attempts=rec.attempts,
        created_at=rec.created_at, started_at=rec.started_at, finished_at=rec.finished_at, links=links,
    )


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
    catalog.check_metric(body.metric, has_dataset=dataset is not None)
    compat.check_dataset_fits(model.inputs, dataset, body.options)  # before anything is queued
    compat.check_latency_table_fits(model.layers, candidates, body.options)
    rec = AnalysisRecord(
        model_id=body.model_id, dataset_id=body.dataset_id, candidates=candidates, metric=body.metric,
        seed=body.seed, options=dict(body.options), status="queued", progress=0.0, message="queued", attempts=0,
        token_id=principal.token_id, owned_by=caller.owner,
    )
    submit_job(session, queue, response, "analysis", rec, "/v1/analyses")
    return analysis_out(rec)


def submit_job(session: Session, queue: JobQueue, response: Response, kind: str, rec: JobColumns, under: str) -> None:
    """Commit the queued job row (which gives it its id), offer (kind, id) to the queue and point
    Location at `under`/id."""
    session.add(rec)
    session.commit()  # the runner reads the row from its own session
    queue.enqueue(kind, rec.id)
    response.headers["Location"] = f"{under}/{rec.id}"


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
    if rec.status == "succeeded":
        stored = planning.problem_for(rec.id, lambda: rec.problem)
        out.warnings = [WarningOut.model_validate(w) for w in getattr(stored, "warnings", ())]
    return out


def succeeded_analysis(session: Session, analysis_id: str, caller: Caller) -> AnalysisRecord:
    """The caller's analysis (404 for another owner's), or 409 when its table is not there yet."""
    rec = store.get_analysis(session, analysis_id=analysis_id, owned_by=caller.sees)
    if rec.status != "succeeded":
        raise Conflict(f"analysis {analysis_id} is {rec.status}, not succeeded" + (f": {rec.error}" if rec.error else ""))
    return rec


@router.get("/{analysis_id}/table", response_model=TableOut)
def get_table(
    analysis_id: str, session: Session = Depends(get_session), caller: Caller = Depends(get_caller)
) -> TableOut:
    rec = succeeded_analysis(session, analysis_id, caller)
    return TableOut(analysis_id=rec.id, metric=rec.metric, warnings=(rec.table or {}).get("warnings") or [],
                    **catalog.table_view(rec.table))


@router.post("/{analysis_id}/plans", status_code=201, response_model=PlanOut)
def create_plan(
    analysis_id: str, body: PlanIn, response: Response, session: Session = Depends(get_session),
    caller: Caller = Depends(get_caller),
) -> PlanOut:
    rec = succeeded_analysis(session, analysis_id, caller)
    problem = planning.problem_for(rec.id, lambda: rec.problem)
    budget = body.budget.model_dump(exclude_none=True)
    budgets = planning.budgets_from(problem, budget)
    plan = planning.make_plan(problem, budgets, backend=body.backend, time_limit=body.time_limit_s)
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
    rec = succeeded_analysis(session, analysis_id, caller)
    problem = planning.problem_for(rec.id, lambda: rec.problem)
    return [plan_out(p, problem) for p in store.list_plans(session, analysis_id=analysis_id, owned_by=caller.sees)]
