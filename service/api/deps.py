"""FastAPI dependencies: the one session boundary, settings, blob store, queue and telemetry of the running
app. Routes reach `app.state` only through these."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from functools import partial

from fastapi import Request
from sqlalchemy.orm import Session

from service.api.telemetry import Telemetry
from service.storage.blobs import BlobStore
from service.config import Settings
from service.storage.db.session import session_scope
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


def get_telemetry(request: Request) -> Telemetry:
    return request.app.state.telemetry


def get_session_factory(request: Request) -> Callable[[], AbstractContextManager[Session]]:
    """Short units of work for a long response (an event stream): a session per poll, never one held open."""
    return partial(session_scope, request.app.state.settings.resolved_database_url)
