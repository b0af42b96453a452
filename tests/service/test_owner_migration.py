"""Migration 0006 gives rows made before owners existed the owner the data can tell, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import text

from service.storage.db import migrate
from service.storage.db.session import get_engine

ROWS = (
    "INSERT INTO models (id, name, sha256, format, size_bytes, layers, created_at) VALUES "
    "('m1', 'm', 'x', 'safetensors', 1, '[]', '2026-01-01'), ('m2', 'm', 'x', 'safetensors', 1, '[]', '2026-01-01')",
    "INSERT INTO datasets (id, name, sha256, size_bytes, samples, input_shape, input_dtype, has_targets, created_at) "
    "VALUES ('d1', 'd', 'x', 1, 1, '[]', 'F32', false, '2026-01-01')",
    "INSERT INTO analyses (id, model_id, dataset_id, candidates, metric, options, seed, status, progress, message, "
    "attempts, created_at, token_id) VALUES "
    "('a1', 'm1', 'd1', '[]', 'h', '{}', 0, 'succeeded', 1, '', 1, '2026-01-02', 'tokA'), "
    "('a2', 'm1', 'd1', '[]', 'h', '{}', 0, 'succeeded', 1, '', 1, '2026-01-03', 'tokB'), "
    "('a3', 'm2', NULL, '[]', 'h', '{}', 0, 'succeeded', 1, '', 1, '2026-01-03', NULL)",
    "INSERT INTO plans (id, analysis_id, budget, assignment, total_bytes, average_bits, predicted_damage, costs, "
    "solver_status, gap, backend, solve_seconds, created_at) VALUES "
    "('p2', 'a2', '{}', '{}', 1, 1, 1, '{}', 'optimal', 0, 'mckp', 0, '2026-01-04'), "
    "('p3', 'a3', '{}', '{}', 1, 1, 1, '{}', 'optimal', 0, 'mckp', 0, '2026-01-04')",
    "INSERT INTO evaluations (id, target, analysis_id, plan_id, dataset_id, request, status, progress, message, "
    "attempts, created_at, token_id) VALUES ('e1', 'plan', 'a2', 'p2', 'd1', '{}', 'queued', 0, '', 0, "
    "'2026-01-05', 'tokA')",
)


@pytest.fixture(params=["sqlite", "postgres"])
def url(request, tmp_path):
    return f"sqlite:///{tmp_path / 'db.sqlite'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")


def _owners(url: str, table: str) -> dict[str, str]:
    with get_engine(url).connect() as conn:
        return dict(conn.execute(text(f"SELECT id, owned_by FROM {table}")).all())


def test_existing_rows_get_the_owner_their_data_tells(url):
    migrate.upgrade(url, "0005")
    with get_engine(url).begin() as conn:
        for statement in ROWS:
            conn.execute(text(statement))
    migrate.upgrade(url)
    assert _owners(url, "analyses") == {"a1": "tokA", "a2": "tokB", "a3": "local"}
    assert _owners(url, "models") == {"m1": "tokA", "m2": "local"}  # its first analysis's token
    assert _owners(url, "datasets") == {"d1": "tokA"}
    assert _owners(url, "plans") == {"p2": "tokB", "p3": "local"}  # its analysis's owner
    assert _owners(url, "evaluations") == {"e1": "tokA"}  # the token that submitted it
    command.downgrade(migrate.alembic_config(url), "0005")
    with get_engine(url).connect() as conn:
        assert "owned_by" not in conn.execute(text("SELECT * FROM plans")).keys()
