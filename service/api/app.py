"""The FastAPI application: routers, error handlers, and the job queue's lifetime."""

from __future__ import annotations

from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import Depends, FastAPI

from service.api import errors, security
from service.api.idempotency import IdempotencyMiddleware, document_header
from service.api.limits import BodySizeLimitMiddleware, InFlightLimitMiddleware, RateLimitMiddleware
from service.api.telemetry import Telemetry, TelemetryMiddleware
from service.api.routes import (
    analyses, datasets, evaluations, export_jobs, exports, frontiers, jobs_routes, models, ops, plans, schema_docs, solve,
    tokens,
)
from service.storage.blobs import BlobStore
from service import dashboard
from service.config import Settings, get_settings
from service.storage.db import migrate
from service.storage.db.session import configure_pool
from service.jobs import make_queue


def create_app(settings: Settings | None = None, *, run_jobs: bool = True) -> FastAPI:
    settings = settings or get_settings()
    auth_on = security.auth_required(settings)  # raises before serving anything on an unsafe configuration
    # Blocking route work runs on `api_threads` threads with one pooled connection each, so a request
    # never waits for a connection held by a request that waits for it (see routes: plain `def` for
    # database work, never the session inside `async def`).
    configure_pool(settings.resolved_database_url, threads=settings.api_threads, timeout_s=settings.db_pool_timeout_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if settings.auto_migrate:
            migrate.upgrade(settings.resolved_database_url)
        if run_jobs:
            app.state.queue.start()
        try:
            yield
        finally:
            if run_jobs:
                app.state.queue.stop()

    app = FastAPI(
        title="bitplan",
        version="1",
        summary="Mixed-precision bit allocation: per-layer formats, provably optimal for a budget.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.blobs = BlobStore(settings.data_dir / "blobs")
    app.state.queue = make_queue(settings)
    app.state.auth_required = auth_on
    app.state.telemetry = Telemetry(settings.resolved_database_url)
    errors.install(app)
    for module in (models, datasets, analyses, frontiers, jobs_routes, plans, exports, export_jobs, solve, evaluations):
        app.include_router(module.router, dependencies=[Depends(security.require_method_scope)])
    app.include_router(tokens.router, dependencies=[Depends(security.require_scope("admin"))])
    app.include_router(ops.router)
    app.include_router(schema_docs.router)
    # The dashboard's page and static files are public: its scripts send the user's token to the API.
    app.include_router(dashboard.router)
    # Outermost last: telemetry sees everything; overload is refused before any work; sizes are refused
    # before the caller is looked up; the rate limit and idempotency need the caller.
    app.add_middleware(IdempotencyMiddleware, settings=settings)
    app.add_middleware(RateLimitMiddleware, rate=settings.rate_limit_per_s, burst=settings.rate_limit_burst)
    app.add_middleware(security.AuthenticationMiddleware, settings=settings, required=auth_on)
    app.add_middleware(BodySizeLimitMiddleware, max_upload_bytes=settings.max_upload_bytes)
    app.add_middleware(InFlightLimitMiddleware, limit=settings.max_in_flight_requests)
    app.add_middleware(TelemetryMiddleware, telemetry=app.state.telemetry)
    document_header(app)
    errors.document(app)
    return app
