"""Evaluations: measure a plan (and its baselines) or points of a stored frontier on evaluation data.

An evaluation is a job like an analysis (service.jobs.kinds.KINDS): the route commits a queued row and
offers (kind "evaluation", id) to the queue; a child process measures, and the row carries status,
progress, attempts, cancel and the result. Bad evaluation data (wrong input shape for the model) is
found by the job and fails it with the worker's message.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from service.core import evaluations
from service.storage import store
from service.api.deps import get_queue, get_session, get_session_factory, get_settings
from service.api.jobs_http import EVENT_STREAM_DOC, Sessions, job_events, submit_job
from service.api.limits import check_active_jobs
from service.api.responses import evaluation_out
from service.api.schemas import EvaluationIn, EvaluationOut, FrontierEvaluationIn
from service.api.security import Caller, Principal, get_caller, get_principal
from service.config import Settings
from service.storage.db.models import EvaluationRecord
from service.errors import InvalidInput
from service.jobs import JobQueue
from service.core.stored_frontiers import frontier_of

router = APIRouter(tags=["evaluations"])


def _submit(session: Session, queue: JobQueue, response: Response, rec: EvaluationRecord) -> EvaluationOut:
    submit_job(session, queue, response, "evaluation", rec, "/v1/evaluations")
    return evaluation_out(rec)


@router.post("/v1/plans/{plan_id}/evaluations", status_code=202, response_model=EvaluationOut)
def evaluate_plan(
    plan_id: str,
    body: EvaluationIn,
    response: Response,
    session: Session = Depends(get_session),
    queue: JobQueue = Depends(get_queue),
    settings: Settings = Depends(get_settings),
    principal: Principal = Depends(get_principal),
    caller: Caller = Depends(get_caller),
) -> EvaluationOut:
    """Measure the plan, and the baselines at its bytes: uniform, greedy and the plain HAWQ-v3 formula
    (when the analysis is a Hutchinson one)."""
    check_active_jobs(session, principal=principal, limit=settings.max_active_jobs_per_token)
    plan = store.get_plan(session, plan_id=plan_id, owned_by=caller.sees)
    analysis = store.get_succeeded_analysis(session, analysis_id=plan.analysis_id, owned_by=caller.sees)
    store.get_dataset(session, dataset_id=body.dataset_id, owned_by=caller.sees)
    if body.refine_rounds and analysis.dataset_id is None:
        raise InvalidInput("refine_rounds", "the analysis ran without calibration data; the loop measures on it")
    rec = EvaluationRecord(
        target="plan", analysis_id=analysis.id, plan_id=plan.id, dataset_id=body.dataset_id,
        request={"baselines": body.baselines, "options": body.options.model_dump(exclude_none=True),
                 "refine_rounds": body.refine_rounds},
        status="queued", progress=0.0, message="queued", attempts=0, token_id=principal.token_id,
        owned_by=caller.owner,
    )
    return _submit(session, queue, response, rec)


@router.post("/v1/analyses/{analysis_id}/frontier/evaluations", status_code=202, response_model=EvaluationOut)
def evaluate_frontier(
    analysis_id: str,
    body: FrontierEvaluationIn,
    response: Response,
    session: Session = Depends(get_session),
    queue: JobQueue = Depends(get_queue),
    settings: Settings = Depends(get_settings),
    principal: Principal = Depends(get_principal),
    caller: Caller = Depends(get_caller),
) -> EvaluationOut:
    """Measure `k` evenly spaced points of the stored frontier (computed and stored now if needed) and
    the rank agreement of their predicted damage with the measured loss."""
    check_active_jobs(session, principal=principal, limit=settings.max_active_jobs_per_token)
    analysis = store.get_succeeded_analysis(session, analysis_id=analysis_id, owned_by=caller.sees)
    store.get_dataset(session, dataset_id=body.dataset_id, owned_by=caller.sees)
    stored = frontier_of(session, analysis=analysis, cost=body.cost, points=body.points)  # the one GET .../frontier serves
    chosen = evaluations.choose_frontier_points(stored.data, body.k)
    if not chosen:
        raise InvalidInput("points", "the stored frontier has no points to measure")
    rec = EvaluationRecord(
        target="frontier", analysis_id=analysis.id, dataset_id=body.dataset_id,
        request={
            "cost": body.cost, "points_requested": body.points, "k": body.k, "refine_trials": body.refine_trials,
            "options": body.options.model_dump(exclude_none=True), "points": chosen,
        },
        status="queued", progress=0.0, message="queued", attempts=0, token_id=principal.token_id,
        owned_by=caller.owner,
    )
    return _submit(session, queue, response, rec)


@router.get("/v1/evaluations/{evaluation_id}", response_model=EvaluationOut)
def get_evaluation(
    evaluation_id: str, session: Session = Depends(get_session), caller: Caller = Depends(get_caller)
) -> EvaluationOut:
    rec = store.get_evaluation(session, evaluation_id=evaluation_id, owned_by=caller.sees)
    costs = store.get_plan(session, plan_id=rec.plan_id).costs if rec.plan_id else None
    return evaluation_out(rec, plan_costs=costs, full=True)


@router.get("/v1/evaluations/{evaluation_id}/events", response_class=StreamingResponse, responses=EVENT_STREAM_DOC)
def evaluation_events(
    evaluation_id: str,
    request: Request,
    sessions: Sessions = Depends(get_session_factory),
    settings: Settings = Depends(get_settings),
    caller: Caller = Depends(get_caller),
) -> StreamingResponse:
    """Server-Sent Events: `evaluation` events on every change of status or progress, then `end`."""
    return job_events(request, sessions, settings, caller, kind="evaluation", job_id=evaluation_id)


@router.post("/v1/evaluations/{evaluation_id}/cancel", status_code=202, response_model=EvaluationOut)
def cancel_evaluation(
    evaluation_id: str, session: Session = Depends(get_session), caller: Caller = Depends(get_caller)
) -> EvaluationOut:
    """Queued: cancelled at once. Running: cancel requested, cancelled within seconds. Finished: 409."""
    return evaluation_out(store.request_cancel(session, kind="evaluation", job_id=evaluation_id, owned_by=caller.sees))


@router.get("/v1/analyses/{analysis_id}/evaluations", response_model=list[EvaluationOut])
def list_evaluations(
    analysis_id: str, session: Session = Depends(get_session), caller: Caller = Depends(get_caller)
) -> list[EvaluationOut]:
    """Every evaluation of the analysis with its measured points (no full results: follow links.self)."""
    store.get_analysis(session, analysis_id=analysis_id, owned_by=caller.sees)
    out = []
    for rec in store.list_evaluations(session, analysis_id=analysis_id, owned_by=caller.sees):
        costs = store.get_plan(session, plan_id=rec.plan_id).costs if rec.plan_id else None
        out.append(evaluation_out(rec, plan_costs=costs))
    return out
