"""/v1/analyses/{id}/cancel and /v1/analyses/{id}/events: acting on and following a running job.

`job_events` serves the stream of every job kind (evaluations use it too). Each poll also re-checks the
caller's token, so revoking a token ends its open streams within one poll interval.

Cancel only writes the request into the row; whichever process runs the job (an API runner thread or a
`bitplan worker` anywhere) polls its row and ends the child's process group. The event stream polls the
row too, so it works the same whichever back-end runs the job.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from service import store, tokens
from service.api.deps import get_session, get_session_factory, get_settings
from service.api.routes.analyses import analysis_out
from service.api.schemas import AnalysisOut
from service.api.security import Caller, get_caller
from service.config import Settings
from service.errors import Unauthorized

router = APIRouter(prefix="/v1/analyses", tags=["analyses"])

Sessions = Callable[[], AbstractContextManager[Session]]


@router.post("/{analysis_id}/cancel", status_code=202, response_model=AnalysisOut)
def cancel_analysis(
    analysis_id: str, session: Session = Depends(get_session), caller: Caller = Depends(get_caller)
) -> AnalysisOut:
    """Queued: cancelled at once. Running: cancel requested, cancelled within seconds. Finished: 409."""
    return analysis_out(store.request_cancel(session, kind="analysis", job_id=analysis_id, owned_by=caller.sees))


def _snapshot(sessions: Sessions, kind: str, job_id: str, caller: Caller) -> dict:
    """The job's state; Unauthorized once the caller's token is revoked."""
    with sessions() as s:
        if caller.token_id is not None and not tokens.is_live(s, token_id=caller.token_id):
            raise Unauthorized("authorization: the token was revoked")
        rec = store.get_job(s, kind=kind, job_id=job_id, owned_by=caller.sees)
        return {
            "id": rec.id, "status": rec.status, "progress": round(rec.progress, 4), "message": rec.message,
            "attempts": rec.attempts, "error": rec.error,
        }


async def _events(
    request: Request, sessions: Sessions, kind: str, job_id: str, caller: Caller, poll_s: float, keepalive_s: float
) -> AsyncIterator[str]:
    last: dict | None = None
    last_sent = time.monotonic()
    seq = 0
    yield "retry: 2000\n\n"
    while True:
        try:
            snap = await run_in_threadpool(_snapshot, sessions, kind, job_id, caller)
        except Unauthorized as exc:  # the stream ends; reconnecting gets the 401
            yield f"event: error\ndata: {json.dumps({'detail': exc.message, 'field': 'authorization'})}\n\n"
            return
        if snap != last:
            seq += 1
            last, last_sent = snap, time.monotonic()
            yield f"id: {seq}\nevent: {kind}\ndata: {json.dumps(snap)}\n\n"
            if snap["status"] in store.TERMINAL:
                # An explicit end, so EventSource clients close instead of reconnecting forever.
                yield f"event: end\ndata: {json.dumps({'status': snap['status']})}\n\n"
                return
        elif time.monotonic() - last_sent >= keepalive_s:
            last_sent = time.monotonic()
            yield ": keep-alive\n\n"
        if await request.is_disconnected():
            return
        await _sleep(poll_s)


async def _sleep(seconds: float) -> None:
    import anyio

    await anyio.sleep(seconds)


@router.get(
    "/{analysis_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "one event per change; ends when done"}},
)
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


EVENT_STREAM_DOC = {200: {"content": {"text/event-stream": {}}, "description": "one event per change; ends when done"}}


def job_events(
    request: Request, sessions: Sessions, settings: Settings, caller: Caller, *, kind: str, job_id: str
) -> StreamingResponse:
    """The event stream of one job of any kind; 404 before the stream starts when it does not exist or
    is another owner's."""
    _snapshot(sessions, kind, job_id, caller)
    return StreamingResponse(
        _events(request, sessions, kind, job_id, caller, settings.job_poll_s, settings.sse_keepalive_s),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
