"""ORM tables. Schemas at the HTTP edge live in service/api/schemas.py, separate from these."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON, BigInteger, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timestamps always come back timezone-aware in UTC (SQLite would drop the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime()}


# The owner of everything made while auth is off (and of rows older than owners): one local user.
LOCAL_OWNER = "local"


class Owned:
    """Who a row belongs to: the id of the token that made it, or LOCAL_OWNER. Only its owner and
    admins ever see it (service.storage.store's lookups take the caller's owner); everyone else gets 404."""

    owned_by: Mapped[str] = mapped_column(String(32), index=True, default=LOCAL_OWNER, server_default=LOCAL_OWNER)


class ModelRecord(Owned, Base):
    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    format: Mapped[str] = mapped_column(String(20))
    architecture: Mapped[str | None] = mapped_column(String(50))
    hyperparams: Mapped[dict[str, Any] | None]
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    layers: Mapped[list[Any]]
    # What one call takes (workers.models.input_signature), for the submit-time check (service.core.compat).
    inputs: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DatasetRecord(Owned, Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    samples: Mapped[int] = mapped_column(Integer)
    input_shape: Mapped[list[Any]]
    input_dtype: Mapped[str] = mapped_column(String(20))
    has_targets: Mapped[bool]
    max_token_id: Mapped[int | None] = mapped_column(BigInteger)  # largest integer input; None for float / text
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobColumns:
    """The lifecycle every job kind shares (service.storage.store's job functions and service.jobs read and
    write only these): queued → running (owner token, heartbeat) → succeeded / failed / cancelled,
    with attempts, retry backoff and a cancel request.

    Why a mixin and not one generic jobs table: each kind keeps its inputs and results as real
    columns with real foreign keys (an analysis's table, an evaluation's plan), existing rows and
    queries stay as they are, and the store's lifecycle functions take the record class from one
    registry (`store.JOB_RECORDS`), so no lifecycle code is written twice.
    """

    status: Mapped[str] = mapped_column(String(20), index=True, default="queued")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    # The attempt that owns a running row; only its writes (progress, outcome) are accepted, so a
    # worker presumed dead that comes back can never complete a job a second time.
    owner: Mapped[str | None] = mapped_column(String(32))
    cancel_requested: Mapped[bool] = mapped_column(default=False, server_default="0")
    retry_at: Mapped[datetime | None]  # a queued retry is not claimed before this (backoff)
    token_id: Mapped[str | None] = mapped_column(String(32), index=True)  # who submitted it (per-token limits)


class AnalysisRecord(Owned, JobColumns, Base):
    __tablename__ = "analyses"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"), index=True)
    candidates: Mapped[list[Any]]
    metric: Mapped[str] = mapped_column(String(50))
    options: Mapped[dict[str, Any]]
    seed: Mapped[int] = mapped_column(Integer)
    # Large JSON, loaded only when read: status polls and cached re-solves never pay for them.
    table: Mapped[dict[str, Any] | None] = mapped_column(deferred=True)
    problem: Mapped[dict[str, Any] | None] = mapped_column(deferred=True)


class AnalysisShardRecord(Owned, JobColumns, Base):
    """One sub-job of a sharded analysis (options.shards > 1): shard `shard_index` of `shard_count`
    measures its share of the calibration samples and keeps the metric's per-sample sums in `sums`
    until the analysis merges them (workers.sharding; lifecycle in service.storage.shards). Made with
    all its siblings in one transaction, so an analysis never has some of its shards."""

    __tablename__ = "analysis_shards"
    __table_args__ = (UniqueConstraint("analysis_id", "shard_index", name="uq_analysis_shard"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    analysis_id: Mapped[str] = mapped_column(ForeignKey("analyses.id"), index=True)
    shard_index: Mapped[int] = mapped_column(Integer)
    shard_count: Mapped[int] = mapped_column(Integer)
    sums: Mapped[dict[str, Any] | None] = mapped_column(deferred=True)


class PlanRecord(Owned, Base):
    __tablename__ = "plans"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    analysis_id: Mapped[str] = mapped_column(ForeignKey("analyses.id"), index=True)
    budget: Mapped[dict[str, Any]]
    assignment: Mapped[dict[str, Any]]
    total_bytes: Mapped[float] = mapped_column(Float)
    average_bits: Mapped[float] = mapped_column(Float)
    predicted_damage: Mapped[float] = mapped_column(Float)
    costs: Mapped[dict[str, Any]]
    solver_status: Mapped[str] = mapped_column(String(20))
    gap: Mapped[float] = mapped_column(Float)
    # The proof's relative tolerance (status optimal) and the lower bound (time_limit, feasible);
    # NULL for plans stored before migration 0008 or when the solver gives none.
    tolerance: Mapped[float | None] = mapped_column(Float, nullable=True)
    bound: Mapped[float | None] = mapped_column(Float, nullable=True)
    backend: Mapped[str] = mapped_column(String(20))
    solve_seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FrontierRecord(Owned, Base):
    """A computed frontier of an analysis, kept so the dashboard and clients never recompute it; it
    belongs to the analysis's owner (one stored frontier per request, whoever asked first)."""

    __tablename__ = "frontiers"
    __table_args__ = (UniqueConstraint("analysis_id", "cost", "points_requested", name="uq_frontier_request"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    analysis_id: Mapped[str] = mapped_column(ForeignKey("analyses.id"), index=True)
    cost: Mapped[str] = mapped_column(String(50))
    points_requested: Mapped[int] = mapped_column(Integer)
    data: Mapped[dict[str, Any]]
    solve_seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EvaluationRecord(Owned, JobColumns, Base):
    """Measured truth, a job like an analysis: one plan measured with its baselines (`target` "plan"),
    or K points of a stored frontier measured in one job (`target` "frontier").

    `request` holds what the job needs beyond the ids (options, baselines, and for a frontier the
    chosen points with their assignments, fixed when the evaluation was accepted). `rank_agreement`
    (frontier only) is predicted plan damage vs measured loss across the points, kept in its own
    column so proxy quality reads it without loading results.
    """

    __tablename__ = "evaluations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    target: Mapped[str] = mapped_column(String(20))
    analysis_id: Mapped[str] = mapped_column(ForeignKey("analyses.id"), index=True)
    plan_id: Mapped[str | None] = mapped_column(ForeignKey("plans.id"), index=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"))
    request: Mapped[dict[str, Any]]
    result: Mapped[dict[str, Any] | None]
    rank_agreement: Mapped[dict[str, Any] | None]


class ExportRecord(Owned, JobColumns, Base):
    """A plan written in a format that needs the model (the fake-quantized checkpoint), built by a job
    like an analysis. The file lives in the blob store (service.core.exports.export_path) once the job
    succeeded; `sha256` and `size_bytes` are set only then, so a row never points at half a file."""

    __tablename__ = "exports"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    plan_id: Mapped[str] = mapped_column(ForeignKey("plans.id"), index=True)
    format: Mapped[str] = mapped_column(String(30))
    sha256: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    filename: Mapped[str | None] = mapped_column(String(200))
    media_type: Mapped[str | None] = mapped_column(String(100))
    warnings: Mapped[list[Any] | None]


class ApiTokenRecord(Base):
    """A bearer token. Only the sha256 of its secret is kept; `prefix` is the public part used to find the row."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class IdempotencyRecord(Base):
    """A POST seen under an Idempotency-Key: in flight until its response is stored, replayed until it expires."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("owner", "key", name="uq_idempotency_owner_key"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(32))  # token id, or "anonymous" when auth is off
    key: Mapped[str] = mapped_column(String(200))
    request_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(20), default="in_flight")
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_headers: Mapped[dict[str, Any] | None]
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
