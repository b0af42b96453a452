"""The FastAPI application: routers, error handlers, and the job queue's lifetime."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.api import errors
from service.api.routes import analyses, datasets, models, plans
from service.blobs import BlobStore
from service.config import Settings, get_settings
from service.db import migrate
from service.jobs import make_queue


def create_app(settings: Settings | None = None, *, run_jobs: bool = True) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
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
    errors.install(app)
    for module in (models, datasets, analyses, plans):
        app.include_router(module.router)

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
