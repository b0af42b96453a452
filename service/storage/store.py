"""Data access: keyword-only functions over a Session. Routes and jobs call these, never raw queries.

Ownership: every lookup and list takes `owned_by`, the one owner whose rows the caller may see
(service.api.security.Caller.sees), or None for every owner (admins, no auth, jobs). A row of
another owner is NotFound, exactly like a row that does not exist, so ids reveal nothing."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.storage.db.models import (
    AnalysisRecord, AnalysisShardRecord, DatasetRecord, EvaluationRecord, ExportRecord, FrontierRecord, IdempotencyRecord, JobColumns,
    ModelRecord, PlanRecord, new_id, utcnow,
)
from service.storage.db.session import get_engine
from service.errors import Conflict, NotFound

ACTIVE = ("queued", "running")
TERMINAL = ("succeeded", "failed", "cancelled")
# The record of every job kind (same lifecycle columns, service.storage.db.models.JobColumns): the lifecycle
# functions below take a kind and work on its table. The rest of a kind (its request, how it is built,
# its work) is its entry in service.jobs.kinds.KINDS, which has one entry for each key here.
JOB_RECORDS: dict[str, type[JobColumns]] = {
    "analysis": AnalysisRecord, "evaluation": EvaluationRecord, "export": ExportRecord,
    "analysis_shard": AnalysisShardRecord,  # the sub-jobs of a sharded analysis (service.storage.shards)
}


def _get(session: Session, record: type[Any], kind: str, record_id: str, owned_by: str | None = None) -> Any:
    """The row of `record` with this id; NotFound naming `kind` when there is none or it is another owner's."""
    rec = session.get(record, record_id)
    if rec is None or (owned_by is not None and rec.owned_by != owned_by):
        raise NotFound(kind, record_id)
    return rec


def _visible(stmt, record: type[Any], owned_by: str | None):
    return stmt if owned_by is None else stmt.where(record.owned_by == owned_by)


def ping_database(url: str) -> None:
    """One round trip on a fresh pooled connection (readiness): raises the driver's error when the
    database cannot answer. Not through a session, so a probe works while the pool's sessions wait."""
    with get_engine(url).connect() as conn:
        conn.execute(text("SELECT 1"))


def save(session: Session, rec: Any) -> Any:
    """Add a new row and commit it: its id exists from here on, and other sessions (runners) can read it."""
    session.add(rec)
    session.commit()
    return rec


def get_model(session: Session, *, model_id: str, owned_by: str | None = None) -> ModelRecord:
    return _get(session, ModelRecord, "model", model_id, owned_by)


def get_dataset(session: Session, *, dataset_id: str, owned_by: str | None = None) -> DatasetRecord:
    return _get(session, DatasetRecord, "dataset", dataset_id, owned_by)


def get_analysis(session: Session, *, analysis_id: str, owned_by: str | None = None) -> AnalysisRecord:
    return _get(session, AnalysisRecord, "analysis", analysis_id, owned_by)


def get_succeeded_analysis(session: Session, *, analysis_id: str, owned_by: str | None = None) -> AnalysisRecord:
    """The analysis (NotFound for another owner's), or Conflict when its table is not there yet."""
    rec = get_analysis(session, analysis_id=analysis_id, owned_by=owned_by)
    if rec.status != "succeeded":
        raise Conflict(f"analysis {analysis_id} is {rec.status}, not succeeded" + (f": {rec.error}" if rec.error else ""))
    return rec


def get_plan(session: Session, *, plan_id: str, owned_by: str | None = None) -> PlanRecord:
    return _get(session, PlanRecord, "plan", plan_id, owned_by)


def list_analyses(session: Session, *, limit: int = 100, owned_by: str | None = None) -> list[AnalysisRecord]:
    stmt = select(AnalysisRecord).order_by(AnalysisRecord.created_at.desc()).limit(limit)
    return list(session.scalars(_visible(stmt, AnalysisRecord, owned_by)))


def list_plans(session: Session, *, analysis_id: str, owned_by: str | None = None) -> list[PlanRecord]:
    stmt = select(PlanRecord).where(PlanRecord.analysis_id == analysis_id).order_by(PlanRecord.created_at)
    return list(session.scalars(_visible(stmt, PlanRecord, owned_by)))


def sibling_analyses(session: Session, *, analysis: AnalysisRecord, owned_by: str | None = None) -> list[AnalysisRecord]:
    """Other succeeded analyses of the same model and data (proxy quality compares their tables)."""
    stmt = select(AnalysisRecord).where(
        AnalysisRecord.model_id == analysis.model_id,
        AnalysisRecord.dataset_id == analysis.dataset_id,
        AnalysisRecord.id != analysis.id,
        AnalysisRecord.status == "succeeded",
    )
    return list(session.scalars(_visible(stmt, AnalysisRecord, owned_by)))


def analysis_counts(session: Session) -> dict[str, int]:
    """Analyses by status (Prometheus' jobs by state and queue depth)."""
    stmt = select(AnalysisRecord.status, func.count()).group_by(AnalysisRecord.status)
    return {status: int(n) for status, n in session.execute(stmt).all()}


def finished_analysis_spans(session: Session) -> list[tuple[str, Any, Any]]:
    """(status, started_at, finished_at) of every succeeded or failed analysis (Prometheus' durations)."""
    stmt = select(AnalysisRecord.status, AnalysisRecord.started_at, AnalysisRecord.finished_at).where(
        AnalysisRecord.status.in_(("succeeded", "failed")),
        AnalysisRecord.started_at.is_not(None), AnalysisRecord.finished_at.is_not(None))
    return [tuple(row) for row in session.execute(stmt).all()]


def job_record(kind: str) -> type[JobColumns]:
    """The record class of a job kind ("analysis", "evaluation", "export"); ValueError naming the valid kinds."""
    try:
        return JOB_RECORDS[kind]
    except KeyError:
        raise ValueError(f"kind: unknown job kind {kind!r}; valid kinds: {', '.join(JOB_RECORDS)}") from None


def get_job(session: Session, *, kind: str, job_id: str, owned_by: str | None = None) -> Any:
    return _get(session, job_record(kind), kind, job_id, owned_by)


def claim_job(session: Session, *, kind: str, job_id: str) -> str | None:
    """Move queued → running atomically for one attempt (started_at stays the first attempt's) and return
    that attempt's owner token; None when someone else took it, it is no longer queued, or its retry
    backoff has not passed yet."""
    rec = job_record(kind)
    now = utcnow()
    owner = new_id()
    result = session.execute(
        update(rec)
        .where(rec.id == job_id, rec.status == "queued", or_(rec.retry_at.is_(None), rec.retry_at <= now))
        .values(
            status="running",
            attempts=rec.attempts + 1,
            started_at=func.coalesce(rec.started_at, now),  # the first attempt's: a retry or a shard merge keeps it
            heartbeat_at=now,
            message="starting",
            error=None,
            owner=owner,
            retry_at=None,
        )
    )
    return owner if result.rowcount == 1 else None


def queued_job_ids(session: Session, *, kind: str, created_before: datetime | None = None) -> list[str]:
    """Queued rows of `kind`, oldest first; with `created_before`, only those created by then and not
    waiting for a retry backoff (what a queue whose message may be lost offers again)."""
    rec = job_record(kind)
    conditions = [rec.status == "queued"]
    if created_before is not None:
        conditions += [rec.retry_at.is_(None), rec.created_at <= created_before]
    return list(session.scalars(select(rec.id).where(*conditions).order_by(rec.created_at)))


def requeue_interrupted(
    session: Session, *, kind: str, stale_after: timedelta | None = None, max_attempts: int | None = None
) -> list[str]:
    """Put running jobs of `kind` back in the queue: all of them (in-process runner restart) or only
    those whose heartbeat is older than `stale_after` (a worker that died). Each row moves with its own
    conditional update, so reapers in several processes never requeue a row another attempt just
    claimed. A row whose cancel was requested becomes cancelled; one out of attempts becomes failed.
    Returns the ids put back in the queue (the caller offers them to its queue). A running row that no
    attempt owns is waiting on its sub-jobs (service.storage.shards), which are requeued themselves."""
    rec = job_record(kind)
    conditions = [rec.status == "running", rec.owner.is_not(None)]
    if stale_after is not None:
        conditions.append(rec.heartbeat_at < utcnow() - stale_after)
    rows = session.execute(select(rec.id, rec.cancel_requested, rec.attempts).where(*conditions)).all()
    ids = []
    for job_id, cancel, attempts in rows:
        if cancel:
            values = dict(status="cancelled", message="cancelled", finished_at=utcnow())
        elif max_attempts is not None and attempts >= max_attempts:
            values = dict(status="failed", message="failed", finished_at=utcnow(),
                          error=f"the job's worker was lost on each of {attempts} attempts")
        else:
            values = dict(status="queued", message="requeued after an interrupted run")
        result = session.execute(update(rec).where(rec.id == job_id, *conditions).values(owner=None, **values))
        if result.rowcount == 1 and values["status"] == "queued":
            ids.append(job_id)
    return ids


def report_progress(
    session: Session, *, kind: str, job_id: str, fraction: float, message: str, owner: str | None = None
) -> None:
    """Progress doubles as a heartbeat; with `owner`, only the attempt that owns the row may write it."""
    rec = job_record(kind)
    conditions = [rec.id == job_id, rec.status == "running"]
    if owner is not None:
        conditions.append(rec.owner == owner)
    session.execute(
        update(rec)
        .where(*conditions)
        .values(progress=max(0.0, min(1.0, fraction)), message=message[:500], heartbeat_at=utcnow())
    )


def count_active_jobs(session: Session, *, token_id: str) -> int:
    """Queued and running jobs of every kind submitted with one token (the per-token concurrency limit)."""
    total = 0
    for rec in JOB_RECORDS.values():
        stmt = select(func.count()).select_from(rec).where(rec.token_id == token_id, rec.status.in_(ACTIVE))
        total += int(session.scalar(stmt) or 0)
    return total


# Job lifecycle of one attempt. Every write below is conditional on the attempt's owner token, so the
# database, not the queue, decides which attempt's outcome counts.


def heartbeat(session: Session, *, kind: str, job_id: str, owner: str) -> bool:
    """Mark the attempt alive; False when it no longer owns the row (requeued, cancelled, finished)."""
    rec = job_record(kind)
    result = session.execute(
        update(rec).where(rec.id == job_id, rec.owner == owner, rec.status == "running").values(heartbeat_at=utcnow())
    )
    return result.rowcount == 1


def finish_attempt(
    session: Session,
    *,
    kind: str,
    job_id: str,
    owner: str,
    status: str,
    error: str | None = None,
    outputs: dict[str, Any] | None = None,
) -> bool:
    """Record the outcome of the owning attempt; False (nothing written) for any other attempt. Once a
    cancel is requested only "cancelled" is accepted, so a cancel never loses a race to a late result.
    `outputs`: the kind's own result columns to set on success (an analysis's table and problem, an
    evaluation's result)."""
    if status not in TERMINAL:
        raise ValueError(f"status: must be one of {', '.join(TERMINAL)}, got {status!r}")
    rec = job_record(kind)
    conditions = [rec.id == job_id, rec.owner == owner, rec.status == "running"]
    if status != "cancelled":
        conditions.append(rec.cancel_requested.is_(False))
    values: dict[str, Any] = dict(status=status, error=error, finished_at=utcnow(), message=status)
    if status == "succeeded":
        values.update(outputs or {}, progress=1.0, message="done")
    result = session.execute(update(rec).where(*conditions).values(**values))
    return result.rowcount == 1


def schedule_retry(session: Session, *, kind: str, job_id: str, owner: str, delay_s: float, message: str) -> bool:
    """Give the row back to the queue after a transient failure, not to be claimed for `delay_s`."""
    rec = job_record(kind)
    result = session.execute(
        update(rec)
        .where(rec.id == job_id, rec.owner == owner, rec.status == "running", rec.cancel_requested.is_(False))
        .values(status="queued", owner=None, retry_at=utcnow() + timedelta(seconds=delay_s), message=message[:500])
    )
    return result.rowcount == 1


def defer_offer(session: Session, *, kind: str, job_id: str, delay_s: float) -> bool:
    """A queued job whose offer to the queue failed (Redis down): the reapers offer it again once
    `delay_s` has passed, through the same path as a retry's backoff."""
    rec = job_record(kind)
    result = session.execute(
        update(rec).where(rec.id == job_id, rec.status == "queued")
        .values(retry_at=utcnow() + timedelta(seconds=delay_s))
    )
    return result.rowcount == 1


def release_due_retries(session: Session, *, kind: str) -> list[str]:
    """Queued retries whose backoff has passed; each is returned by exactly one caller, to be enqueued."""
    rec = job_record(kind)
    now = utcnow()
    due = session.scalars(select(rec.id).where(rec.status == "queued", rec.retry_at <= now)).all()
    released = []
    for job_id in due:
        result = session.execute(
            update(rec).where(rec.id == job_id, rec.status == "queued", rec.retry_at <= now).values(retry_at=None)
        )
        if result.rowcount == 1:
            released.append(job_id)
    return released


def request_cancel(session: Session, *, kind: str, job_id: str, owned_by: str | None = None) -> Any:
    """Queued → cancelled at once; running → cancel requested (its runner ends it within seconds).
    Running with no owner (waiting on its sub-jobs, service.storage.shards) → cancelled at once: no
    runner watches it; the caller cancels the sub-jobs. Cancelling a cancelled job is a no-op; a
    finished one is a Conflict."""
    rec_cls = job_record(kind)
    rec = get_job(session, kind=kind, job_id=job_id, owned_by=owned_by)
    result = session.execute(
        update(rec_cls)
        .where(rec_cls.id == job_id, or_(rec_cls.status == "queued",
                                         (rec_cls.status == "running") & rec_cls.owner.is_(None)))
        .values(status="cancelled", message="cancelled", finished_at=utcnow(), retry_at=None, cancel_requested=True)
    )
    if result.rowcount == 0:
        session.execute(
            update(rec_cls)
            .where(rec_cls.id == job_id, rec_cls.status == "running")
            .values(cancel_requested=True, message="cancel requested")
        )
    session.refresh(rec)
    if rec.status in ("succeeded", "failed"):
        raise Conflict(f"{kind} {job_id} already {rec.status}; nothing to cancel")
    return rec


def find_frontier(session: Session, *, analysis_id: str, cost: str, points: int) -> FrontierRecord | None:
    """The stored frontier of an analysis over `points` budgets of `cost`, if it was computed."""
    stmt = select(FrontierRecord).where(
        FrontierRecord.analysis_id == analysis_id, FrontierRecord.cost == cost, FrontierRecord.points_requested == points
    )
    return session.scalars(stmt).first()


def save_frontier(session: Session, *, frontier: FrontierRecord) -> FrontierRecord:
    """Store a computed frontier; when a concurrent request stored the same one first, that one."""
    session.add(frontier)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        return find_frontier(session, analysis_id=frontier.analysis_id, cost=frontier.cost,
                             points=frontier.points_requested)
    return frontier


# Evaluations: measured plans and frontier points (the job kind "evaluation").


def get_evaluation(session: Session, *, evaluation_id: str, owned_by: str | None = None) -> EvaluationRecord:
    return get_job(session, kind="evaluation", job_id=evaluation_id, owned_by=owned_by)


def list_evaluations(
    session: Session, *, analysis_id: str, target: str | None = None, owned_by: str | None = None
) -> list[EvaluationRecord]:
    stmt = select(EvaluationRecord).where(EvaluationRecord.analysis_id == analysis_id)
    if target is not None:
        stmt = stmt.where(EvaluationRecord.target == target)
    return list(session.scalars(_visible(stmt, EvaluationRecord, owned_by).order_by(EvaluationRecord.created_at)))


# Exports: plans written in formats that need the model, built by a job (the job kind "export").


def get_export(session: Session, *, export_id: str, owned_by: str | None = None) -> ExportRecord:
    return get_job(session, kind="export", job_id=export_id, owned_by=owned_by)


# Idempotency keys (service.api.idempotency): one row per (owner, key) holding the first response, replayed
# to a retry of the same request.


def begin_idempotent(
    session: Session, *, owner: str, key: str, request_hash: str, ttl_s: int, stale_after: timedelta
) -> tuple[str, Any] | None:
    """('new', row id) | ('replay', row, detached) | ('mismatch', None) | ('in_flight', None); None when a
    concurrent duplicate inserted the row first (the session is rolled back; the caller looks again in a
    new one). An expired row is replaced; an in-flight one older than `stale_after` is taken over."""
    now = utcnow()
    rec = session.scalar(select(IdempotencyRecord).where(
        IdempotencyRecord.owner == owner, IdempotencyRecord.key == key))
    if rec is not None and rec.expires_at < now:
        session.delete(rec)
        session.flush()
        rec = None
    if rec is None:
        session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.expires_at < now))
        rec = IdempotencyRecord(owner=owner, key=key, request_hash=request_hash, state="in_flight",
                                expires_at=now + timedelta(seconds=ttl_s))
        session.add(rec)
        try:
            session.flush()
        except IntegrityError:
            session.rollback()
            return None
        return "new", rec.id
    if rec.request_hash != request_hash:
        return "mismatch", None
    if rec.state == "in_flight":
        if rec.created_at < now - stale_after:
            rec.created_at = now  # its process died; this request takes it over
            return "new", rec.id
        return "in_flight", None
    session.expunge(rec)
    return "replay", rec


def finish_idempotent(session: Session, *, row_id: str, status: int, headers: dict[str, str], body: bytes) -> None:
    """Store the response of the request that owns the row, for replays."""
    rec = session.get(IdempotencyRecord, row_id)
    if rec is not None:
        rec.state = "done"
        rec.response_status = status
        rec.response_headers = headers
        rec.response_body = body


def release_idempotent(session: Session, *, row_id: str) -> None:
    """Forget the key: the request raised, or its answer (5xx, transient, too large) is not one to replay."""
    session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.id == row_id))
