"""/v1/analyses/{id}/cancel and /v1/analyses/{id}/events: acting on and following a running job.

Cancel only writes the request into the row; whichever process runs the job (an API runner thread or a
`bitplan worker` anywhere) polls its row and ends the child's process group. The event stream
(service.api.jobs_http, shared with the other job kinds) polls the row too.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from service.storage import shards, store
from service.api.deps import get_session, get_session_factory, get_settings
from service.api.jobs_http import EVENT_STREAM_DOC, Sessions, job_events
from service.api.responses import analysis_out
from service.api.schemas import AnalysisOut
from service.api.security import Caller, get_caller
from service.config import Settings

router = APIRouter(prefix="/v1/analyses", tags=["analyses"])


@router.post("/{analysis_id}/cancel", status_code=202, response_model=AnalysisOut)
def cancel_analysis(
    analysis_id: str, session: Session = Depends(get_session), caller: Caller = Depends(get_caller)
) -> AnalysisOut:
    """Queued: cancelled at once. Running: cancel requested, cancelled within seconds. Finished: 409.
    A sharded analysis's unfinished shards are cancelled with it, in the same transaction."""
    rec = store.request_cancel(session, kind="analysis", job_id=analysis_id, owned_by=caller.sees)
    shards.cancel_shards(session, analysis_id=rec.id)
    return analysis_out(rec)


@router.get("/{analysis_id}/events", response_class=StreamingResponse, responses=EVENT_STREAM_DOC)
def analysis_events(
    analysis_id: str,
    request: Request,
    sessions: Sessions = Depends(get_session_factory),
    settings: Settings = Depends(get_settings),
    caller: Caller = Depends(get_caller),
) -> StreamingResponse:
    """Server-Sent Events: `analysis` events (status, progress, message) on every change, `: keep-alive`
    comments while nothing changes, and an `end` event after a terminal state."""
    return job_events(request, sessions, settings, caller, kind="analysis", job_id=analysis_id)
