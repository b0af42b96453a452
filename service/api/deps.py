"""FastAPI dependencies: the one session boundary, settings, blob store and queue of the running app."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import Request
from sqlalchemy.orm import Session

from service.blobs import BlobStore
from service.config import Settings
from service.db.session import session_scope
from service.jobs import JobQueue


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with session_scope(request.app.state.settings.resolved_database_url) as session:
        yield session


def get_blobs(request: Request) -> BlobStore:
    return request.app.state.blobs


def get_queue(request: Request) -> JobQueue:
    return request.app.state.queue
