"""/v1/plans/{id}/exports and /v1/exports/{id}: exports built by a job (the kind "export").

A format that opens the model (the fake-quantized checkpoint) is long work, so it is a job like an
analysis: the route commits a queued row and offers ("export", id) to the queue; a sandboxed child
writes the file into a scratch folder, the runner moves it into the blob store and only then marks the
row succeeded; `/file` streams it from there. Status, events and cancel are the other kinds' own.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from sqlalchemy.orm import Session

from service.core import exports
from service.storage import store
from service.api.deps import get_blobs, get_queue, get_session, get_session_factory, get_settings
from service.api.jobs_http import EVENT_STREAM_DOC, Sessions, job_events, submit_job
from service.api.limits import check_active_jobs
from service.api.responses import export_out
from service.api.schemas import ExportJobIn, ExportOut
from service.api.security import Caller, Principal, get_caller, get_principal
from service.storage.blobs import BlobStore
from service.config import Settings
from service.storage.db.models import ExportRecord
from service.errors import Conflict, InvalidInput
from service.jobs import JobQueue

router = APIRouter(tags=["exports"])


def _check_format(fmt: str) -> None:
    from workers.exports import get_exporter  # torch-free: the registry imports torch lazily

    try:  # unknown or unavailable (torch or safetensors missing): the message lists the valid names
        exporter = get_exporter(fmt)
    except ValueError as exc:
        raise InvalidInput("format", str(exc)) from exc
    if not exporter.needs_model:
        raise InvalidInput("format", (
            f"{fmt} is answered at once: GET /v1/plans/{{id}}/export?format={fmt}; export jobs build "
            f"{', '.join(exports.job_formats())}"))


@router.post("/v1/plans/{plan_id}/exports", status_code=202, response_model=ExportOut)
def create_export(
    plan_id: str,
    body: ExportJobIn,
    response: Response,
    session: Session = Depends(get_session),
    queue: JobQueue = Depends(get_queue),
    settings: Settings = Depends(get_settings),
    principal: Principal = Depends(get_principal),
    caller: Caller = Depends(get_caller),
) -> ExportOut:
    """Build the plan's export in a job (formats that open the model: `safetensors`); 202 with Location."""
    check_active_jobs(session, principal=principal, limit=settings.max_active_jobs_per_token)
    plan = store.get_plan(session, plan_id=plan_id, owned_by=caller.sees)
    _check_format(body.format)
    rec = ExportRecord(
        plan_id=plan.id, format=body.format, status="queued", progress=0.0, message="queued", attempts=0,
        token_id=principal.token_id, owned_by=caller.owner,
    )
    submit_job(session, queue, response, "export", rec, "/v1/exports")
    return export_out(rec)


@router.get("/v1/exports/{export_id}", response_model=ExportOut)
def get_export(export_id: str, session: Session = Depends(get_session), caller: Caller = Depends(get_caller)) -> ExportOut:
    return export_out(store.get_export(session, export_id=export_id, owned_by=caller.sees))


@router.get("/v1/exports/{export_id}/events", response_class=StreamingResponse, responses=EVENT_STREAM_DOC)
def export_events(
    export_id: str,
    request: Request,
    sessions: Sessions = Depends(get_session_factory),
    settings: Settings = Depends(get_settings),
    caller: Caller = Depends(get_caller),
) -> StreamingResponse:
    """Server-Sent Events: `export` events on every change of status or progress, then `end`."""
    return job_events(request, sessions, settings, caller, kind="export", job_id=export_id)


@router.post("/v1/exports/{export_id}/cancel", status_code=202, response_model=ExportOut)
def cancel_export(export_id: str, session: Session = Depends(get_session), caller: Caller = Depends(get_caller)) -> ExportOut:
    """Queued: cancelled at once. Running: cancel requested, cancelled within seconds (its scratch file
    removed). Finished: 409."""
    return export_out(store.request_cancel(session, kind="export", job_id=export_id, owned_by=caller.sees))


@router.get(
    "/v1/exports/{export_id}/file",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the exported file"}},
)
def export_file(
    export_id: str,
    session: Session = Depends(get_session),
    blobs: BlobStore = Depends(get_blobs),
    caller: Caller = Depends(get_caller),
) -> FileResponse:
    """The file of a succeeded export, streamed from the blob store; 409 while it is not built."""
    rec = store.get_export(session, export_id=export_id, owned_by=caller.sees)
    if rec.status != "succeeded":
        raise Conflict(f"export {export_id} is {rec.status}; its file exists once it has succeeded")
    path = exports.export_path(blobs, rec.id, rec.sha256)
    if not path.is_file():
        raise InvalidInput("export_id", "the export's file is gone from the blob store; export again", status=410)
    headers = {"X-Bitplan-Export-Warnings": " | ".join(rec.warnings).encode("ascii", "replace").decode()} \
        if rec.warnings else None
    return FileResponse(path, media_type=rec.media_type, filename=rec.filename, headers=headers)
