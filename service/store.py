"""Data access: keyword-only functions over a Session. Routes and jobs call these, never raw queries."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.db.models import AnalysisRecord, DatasetRecord, ModelRecord, PlanRecord, utcnow
from service.errors import NotFound

ACTIVE = ("queued", "running")


def get_model(session: Session, *, model_id: str) -> ModelRecord:
    rec = session.get(ModelRecord, model_id)
    if rec is None:
        raise NotFound("model", model_id)
    return rec


def get_dataset(session: Session, *, dataset_id: str) -> DatasetRecord:
    rec = session.get(DatasetRecord, dataset_id)
    if rec is None:
        raise NotFound("dataset", dataset_id)
    return rec


def get_analysis(session: Session, *, analysis_id: str) -> AnalysisRecord:
    rec = session.get(AnalysisRecord, analysis_id)
    if rec is None:
        raise NotFound("analysis", analysis_id)
    return rec


def get_plan(session: Session, *, plan_id: str) -> PlanRecord:
    rec = session.get(PlanRecord, plan_id)
    if rec is None:
        raise NotFound("plan", plan_id)
    return rec


def list_analyses(session: Session, *, limit: int = 100) -> list[AnalysisRecord]:
    stmt = select(AnalysisRecord).order_by(AnalysisRecord.created_at.desc()).limit(limit)
    return list(session.scalars(stmt))


def list_plans(session: Session, *, analysis_id: str) -> list[PlanRecord]:
    stmt = select(PlanRecord).where(PlanRecord.analysis_id == analysis_id).order_by(PlanRecord.created_at)
    return list(session.scalars(stmt))


def claim_analysis(session: Session, *, analysis_id: str) -> bool:
    """Move queued → running atomically; False when someone else took it or it is no longer queued."""
    now = utcnow()
    result = session.execute(
        update(AnalysisRecord)
        .where(AnalysisRecord.id == analysis_id, AnalysisRecord.status == "queued")
        .values(
            status="running",
            attempts=AnalysisRecord.attempts + 1,
            started_at=now,
            heartbeat_at=now,
            message="starting",
            error=None,
        )
    )
    return result.rowcount == 1


def queued_analysis_ids(session: Session) -> list[str]:
    stmt = select(AnalysisRecord.id).where(AnalysisRecord.status == "queued").order_by(AnalysisRecord.created_at)
    return list(session.scalars(stmt))


def requeue_interrupted(session: Session, *, stale_after: timedelta | None = None) -> list[str]:
    """Put running analyses back in the queue: all of them (in-process runner restart) or only
    those whose heartbeat is older than `stale_after` (a worker that died)."""
    stmt = select(AnalysisRecord).where(AnalysisRecord.status == "running")
    if stale_after is not None:
        stmt = stmt.where(AnalysisRecord.heartbeat_at < utcnow() - stale_after)
    ids = []
    for rec in session.scalars(stmt):
        rec.status = "queued"
        rec.message = "requeued after an interrupted run"
        ids.append(rec.id)
    return ids


def report_progress(session: Session, *, analysis_id: str, fraction: float, message: str) -> None:
    session.execute(
        update(AnalysisRecord)
        .where(AnalysisRecord.id == analysis_id, AnalysisRecord.status == "running")
        .values(progress=max(0.0, min(1.0, fraction)), message=message[:500], heartbeat_at=utcnow())
    )


def finish_analysis(
    session: Session,
    *,
    analysis_id: str,
    status: str,
    error: str | None = None,
    table: dict[str, Any] | None = None,
    problem: dict[str, Any] | None = None,
) -> None:
    rec = get_analysis(session, analysis_id=analysis_id)
    rec.status = status
    rec.error = error
    rec.finished_at = utcnow()
    if status == "succeeded":
        rec.table = table
        rec.problem = problem
        rec.progress = 1.0
        rec.message = "done"
    else:
        rec.message = status


def count_active_analyses(session: Session, *, token_id: str) -> int:
    """Queued and running analyses submitted with one token (the per-token concurrency limit)."""
    stmt = select(func.count()).select_from(AnalysisRecord).where(
        AnalysisRecord.token_id == token_id, AnalysisRecord.status.in_(ACTIVE)
    )
    return int(session.scalar(stmt) or 0)
