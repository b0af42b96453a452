"""Operations: liveness, readiness with per-check details, Prometheus metrics. Public, never behind a token,
so load balancers and Prometheus need no secret; they reveal counts and states, not data."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from service.storage import store
from service.api.deps import get_queue, get_settings, get_telemetry
from service.api.telemetry import Telemetry
from service.config import Settings
from service.storage.db import migrate
from service.jobs import JobQueue

router = APIRouter(tags=["operations"])


def _check(fn) -> dict[str, Any]:
    try:
        return fn()
    except Exception as exc:  # a readiness probe reports failures, it does not raise them
        return {"status": "fail", "detail": f"{exc.__class__.__name__}: {exc}"[:300]}


def _database(url: str) -> dict[str, Any]:
    store.ping_database(url)
    return {"status": "ok"}


def _migrations(url: str) -> dict[str, Any]:
    current, head = migrate.current_revision(url), migrate.head_revision(url)
    return {"status": "ok" if current == head else "fail", "detail": f"at {current}, head {head}"}


def _redis(redis_url: str | None) -> dict[str, Any]:
    if not redis_url:
        return {"status": "skipped", "detail": "no Redis configured (in-process runner)"}
    import redis

    redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2).ping()
    return {"status": "ok"}


def _worker(queue: JobQueue, redis_url: str | None) -> dict[str, Any]:
    if not redis_url:
        running = bool(getattr(queue, "_threads", None))
        return {"status": "ok" if running else "unknown", "detail": "in-process runner"}
    try:
        import redis
        from rq import Worker
    except ImportError:
        return {"status": "unknown", "detail": "rq is not installed in the API process"}
    workers = Worker.all(connection=redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2))
    if not workers:
        return {"status": "fail", "detail": "no RQ worker registered in Redis"}
    return {"status": "ok", "detail": f"{len(workers)} RQ worker(s) registered"}


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers. Nothing else is checked, so a database outage does not restart it.
    On the event loop, not a thread, so it answers while every thread is busy."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "A check failed; `checks` says which."}})
def readyz(settings: Settings = Depends(get_settings), queue: JobQueue = Depends(get_queue)) -> JSONResponse:
    """Readiness: database reachable, schema at head, Redis and a worker when Redis is configured."""
    url = settings.resolved_database_url
    checks = {
        "database": _check(lambda: _database(url)),
        "migrations": _check(lambda: _migrations(url)),
        "redis": _check(lambda: _redis(settings.redis_url)),
        "worker": _check(lambda: _worker(queue, settings.redis_url)),
    }
    ready = all(c["status"] in ("ok", "skipped", "unknown") for c in checks.values())
    return JSONResponse(status_code=200 if ready else 503,
                        content={"status": "ready" if ready else "not ready", "checks": checks})


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}})
def metrics(collected: Telemetry = Depends(get_telemetry)) -> Response:
    return Response(generate_latest(collected.registry), media_type=CONTENT_TYPE_LATEST)
