"""Fixtures shared by every test package: real servers and the app on either database."""

from __future__ import annotations

import os
import uuid

import pytest

from tests.utils.servers import start_postgres, start_redis


@pytest.fixture(scope="session")
def postgres_server():
    try:
        server = start_postgres()
    except (FileNotFoundError, OSError) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI and could not start: {exc}")
        pytest.skip(f"PostgreSQL not available: {exc}")
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh, empty database on the session's real PostgreSQL server."""
    return postgres_server.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="session")
def redis_server():
    try:
        server = start_redis()
    except (FileNotFoundError, OSError) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Redis is required in CI and could not start: {exc}")
        pytest.skip(f"Redis not available: {exc}")
    yield server
    server.stop()
