"""Jobs over HTTP, for every job kind's routes: submitting a queued row and following it as an event stream.

Shared by the analysis, evaluation and export routes, so no route imports another for them. Each poll
of a stream re-checks the caller's token, so revoking a token ends its open streams within one poll
interval. The stream polls the row, so it works the same whichever back-end runs the job.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager

from fastapi import Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from service.storage import store, tokens
from service.api.security import Caller
from service.config import Settings
from service.storage.db.models import JobColumns
from service.errors import Unauthorized
from service.jobs import JobQueue

Sessions = Callable[[], AbstractContextManager[Session]]

EVENT_STREAM_DOC = {200: {"content": {"text/event-stream": {}}, "description": "one event per change; ends when done"}}


def submit_job(session: Session, queue: JobQueue, response: Response, kind: str, rec: JobColumns, under: str) -> None:
    """Commit the queued job row (which gives it its id), offer (kind, id) to the queue and point
    Location at `under`/id."""
    store.save(session, rec)  # committed: the runner reads the row from its own session
    queue.enqueue(kind, rec.id)
    response.headers["Location"] = f"{under}/{rec.id}"


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
