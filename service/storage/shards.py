"""Data access for sharded analyses: an analysis row whose work runs as sub-jobs (AnalysisShardRecord).

The lifecycle, every step a conditional write so concurrent workers and reapers agree:
- queued → running (claimed as any job) → fan-out: the attempt that claimed it creates every shard and
  gives up the row in one transaction (`fan_out`): it stays "running" with no owner, which is how a
  row says it waits on its shards. It holds no worker while it waits; the reapers leave it alone
  (store.requeue_interrupted only takes rows with an owner) and its shards are ordinary jobs: claimed,
  heartbeat, retried, requeued when their worker dies.
- its progress is its shards' (`aggregate_progress`, after each shard's progress write).
- `settle` after every shard attempt (and on each reaper tick): all succeeded → the analysis goes back
  to "queued" and is offered: its next attempt is the merge (workers.sharding), which measures
  nothing. A shard failed (or was cancelled) → the analysis fails saying which and why, and the other
  shards are cancelled. A cancelled analysis cancels its shards (`cancel_shards`).

Locks: every transaction that writes both takes the analysis row first (its conditional UPDATE), then
shard rows; a shard's own outcome is committed before its settle, so two workers never wait on each
other, and whichever settle runs last sees every shard's outcome.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.storage.db.models import AnalysisRecord, AnalysisShardRecord, utcnow

__all__ = ["MERGE_SHARE", "aggregate_progress", "cancel_shards", "fan_out", "settle", "shards_of", "waiting_ids"]

MERGE_SHARE = 0.1  # of a sharded analysis's progress bar: the merge (load, trace, quantize) after the shards


def _waiting(analysis_id: str):
    """The analysis row while it waits on its shards: running, no attempt owns it."""
    return (AnalysisRecord.id == analysis_id, AnalysisRecord.status == "running", AnalysisRecord.owner.is_(None))


def shards_of(session: Session, *, analysis_id: str) -> list[AnalysisShardRecord]:
    stmt = select(AnalysisShardRecord).where(AnalysisShardRecord.analysis_id == analysis_id)
    return list(session.scalars(stmt.order_by(AnalysisShardRecord.shard_index)))


def fan_out(session: Session, *, analysis_id: str, owner: str, count: int) -> list[str] | None:
    """Create the `count` shards of the analysis the attempt `owner` holds and release the row to wait
    on them; their ids, or None when the attempt no longer owns it (cancelled, requeued). The fan-out
    is not an attempt at the work, so it is not counted as one."""
    rec = session.get(AnalysisRecord, analysis_id)
    result = session.execute(
        update(AnalysisRecord)
        .where(AnalysisRecord.id == analysis_id, AnalysisRecord.owner == owner, AnalysisRecord.status == "running",
               AnalysisRecord.cancel_requested.is_(False))
        .values(owner=None, attempts=AnalysisRecord.attempts - 1, progress=0.0, heartbeat_at=utcnow(),
                message=f"{count} shards queued")
    )
    if result.rowcount != 1:
        return None
    rows = [AnalysisShardRecord(analysis_id=analysis_id, shard_index=i, shard_count=count, owned_by=rec.owned_by,
                                status="queued", progress=0.0, message="queued", attempts=0) for i in range(count)]
    session.add_all(rows)
    session.flush()
    return [row.id for row in rows]


def aggregate_progress(session: Session, *, analysis_id: str) -> None:
    """The waiting analysis's progress: its shards' mean (the merge is the last MERGE_SHARE), and a
    message saying how many are done and what the slowest running one says."""
    shards = shards_of(session, analysis_id=analysis_id)
    if not shards:
        return
    fraction = (1 - MERGE_SHARE) * sum(1.0 if s.status == "succeeded" else s.progress for s in shards) / len(shards)
    done = sum(s.status == "succeeded" for s in shards)
    running = [s for s in shards if s.status == "running"]
    slowest = min(running, key=lambda s: s.progress) if running else None
    message = f"shards: {done} of {len(shards)} done" + (
        f"; shard {slowest.shard_index + 1}: {slowest.message}" if slowest is not None else "")
    session.execute(update(AnalysisRecord).where(*_waiting(analysis_id))
                    .values(progress=fraction, message=message[:500], heartbeat_at=utcnow()))


def settle(session: Session, *, analysis_id: str) -> bool:
    """Decide a waiting analysis from its shards (module docstring); True when it is ready to be
    merged and must be offered to the queue. Reads first and takes the analysis's row only when there
    is something to decide, so the reapers' sweeps over waiting analyses write nothing."""
    if _outcome(_states(session, analysis_id)) is None:
        return False
    locked = session.execute(update(AnalysisRecord).where(*_waiting(analysis_id)).values(heartbeat_at=utcnow()))
    if locked.rowcount != 1:
        return False  # not waiting (queued for its merge, finished, or never sharded)
    states = _states(session, analysis_id)  # again, under the lock: another worker's settle may have run
    outcome = _outcome(states)
    if outcome == "merge":
        session.execute(update(AnalysisRecord).where(*_waiting(analysis_id)).values(
            status="queued", progress=1 - MERGE_SHARE, message=f"merging {len(states)} shards", retry_at=None))
        return True
    if outcome is not None:
        index, status, error = next(state for state in states if state[1] in ("failed", "cancelled"))
        what = f"failed: {error}" if status == "failed" else "was cancelled"
        session.execute(update(AnalysisRecord).where(*_waiting(analysis_id)).values(
            status="failed", error=f"shard {index + 1} of {len(states)} {what}", message="failed",
            finished_at=utcnow()))
        cancel_shards(session, analysis_id=analysis_id)
    return False


def _states(session: Session, analysis_id: str) -> list[tuple[int, str, str | None]]:
    """(index, status, error) of every shard, read from the database (not the session's cached rows)."""
    shard = AnalysisShardRecord
    stmt = select(shard.shard_index, shard.status, shard.error).where(shard.analysis_id == analysis_id)
    return [tuple(row) for row in session.execute(stmt.order_by(shard.shard_index)).all()]


def _outcome(states: list[tuple[int, str, str | None]]) -> str | None:
    """"fail" when a shard failed or was cancelled, "merge" when all succeeded, None while they run."""
    if any(status in ("failed", "cancelled") for _, status, _ in states):
        return "fail"
    if states and all(status == "succeeded" for _, status, _ in states):
        return "merge"
    return None


def cancel_shards(session: Session, *, analysis_id: str) -> None:
    """Every unfinished shard: queued → cancelled at once, running → cancel requested (its runner ends
    its child within a poll)."""
    shard = AnalysisShardRecord
    session.execute(update(shard).where(shard.analysis_id == analysis_id, shard.status == "queued").values(
        status="cancelled", message="cancelled", finished_at=utcnow(), retry_at=None, cancel_requested=True))
    session.execute(update(shard).where(shard.analysis_id == analysis_id, shard.status == "running").values(
        cancel_requested=True, message="cancel requested"))


def waiting_ids(session: Session) -> list[str]:
    """Analyses waiting on their shards (the reapers settle them: a shard their reaper failed)."""
    stmt = select(AnalysisRecord.id).where(AnalysisRecord.status == "running", AnalysisRecord.owner.is_(None))
    return list(session.scalars(stmt.order_by(AnalysisRecord.id)))  # one order: sweeps lock rows alike
