"""One attempt of one job, the same on every queue back-end: claim the row, start the child, watch it,
record what the child could not.

Why a watcher: the child may die without a word (kill -9, memory or CPU limit), a user may cancel the
job, or a reaper elsewhere may have given the row to a newer attempt. Only the process that started the
child sees all three and can act within seconds: it polls the row every `poll_s` (cancel, ownership),
marks it alive every `heartbeat_s`, and after an unrecorded exit either schedules a retry with
exponential backoff or, out of attempts, fails the job with the reason.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from service import store
from service.config import Settings
from service.db.session import session_scope
from service.errors import StorageError
from service.jobs.child import TRANSIENT_EXIT
from service.jobs.process import Limits, kill_tree, start_child

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunnerConfig:
    """Plain values a runner needs; built from Settings once, at the edge."""

    database_url: str
    data_dir: Path
    limits: Limits
    max_attempts: int = 3
    backoff_s: float = 5.0
    heartbeat_s: float = 5.0
    poll_s: float = 0.5

    @classmethod
    def from_settings(cls, settings: Settings) -> RunnerConfig:
        return cls(
            database_url=settings.resolved_database_url,
            data_dir=settings.data_dir.resolve(),
            limits=Limits(settings.job_memory_limit_mb, settings.job_cpu_limit_s),
            max_attempts=settings.job_max_attempts,
            backoff_s=settings.job_retry_backoff_s,
            heartbeat_s=settings.job_heartbeat_s,
            poll_s=settings.job_poll_s,
        )

    def backoff(self, attempt: int) -> float:
        """Delay before attempt `attempt + 1`: backoff_s, then doubling."""
        return self.backoff_s * 2 ** max(0, attempt - 1)


def describe_exit(returncode: int, stderr: str) -> str:
    """Why a child ended without recording an outcome, in words a user can act on."""
    tail = [line for line in (stderr or "").strip().splitlines() if line.strip()]
    if returncode == TRANSIENT_EXIT:
        said = [line for line in tail if line.startswith("transient: ")]
        return said[-1].removeprefix("transient: ") if said else "transient failure"
    if returncode < 0:
        return f"job process killed by signal {-returncode} (memory or CPU limit, or the OOM killer?)"
    return "; ".join([f"job process exited with code {returncode}", *tail[-3:]])


class JobRunner:
    """Thread-safe: several threads may `run` different jobs at once; `stop` ends every child."""

    def __init__(self, config: RunnerConfig):
        self.config = config
        self._children: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def stop(self) -> None:
        """End all children; their rows stay "running" until a restart or a reaper puts them back."""
        self._stopping.set()
        with self._lock:
            for proc in list(self._children):
                kill_tree(proc)

    def run(self, kind: str, job_id: str) -> str:
        """Run one attempt of the job `kind`/`job_id`; returns what became of it (a status, "retry",
        "skipped", "lost", "stopped")."""
        c = self.config
        with session_scope(c.database_url) as s:
            owner = store.claim_job(s, kind=kind, job_id=job_id)
        if owner is None:
            return "skipped"  # cancelled, taken by another worker, already done, or backoff not over
        env = {"BITPLAN_DATABASE_URL": c.database_url, "BITPLAN_DATA_DIR": str(c.data_dir)}
        proc = start_child([kind, job_id, owner], limits=c.limits, env=env)
        with self._lock:
            self._children.add(proc)
        try:
            outcome = self._watch(kind, job_id, owner, proc)
        finally:
            if proc.poll() is None:
                kill_tree(proc)
                proc.wait()
            with self._lock:
                self._children.discard(proc)
        log.info("%s %s (pid %d): %s", kind, job_id, proc.pid, outcome)
        return outcome

    def _watch(self, kind: str, job_id: str, owner: str, proc: subprocess.Popen) -> str:
        c = self.config
        job = dict(kind=kind, job_id=job_id)
        next_beat = time.monotonic() + c.heartbeat_s
        while True:
            try:
                _, err = proc.communicate(timeout=c.poll_s)
                break
            except subprocess.TimeoutExpired:
                pass
            if self._stopping.is_set():
                return "stopped"
            try:
                with session_scope(c.database_url) as s:
                    rec = store.get_job(s, **job)
                    if rec.owner != owner:
                        kill_tree(proc)  # a reaper gave the job to a newer attempt: this one must not finish
                        return "lost"
                    if rec.status != "running":  # the child recorded its outcome and is on its way out
                        try:
                            proc.communicate(timeout=10)
                        except subprocess.TimeoutExpired:
                            kill_tree(proc)
                        return rec.status
                    if rec.cancel_requested:
                        kill_tree(proc)
                        proc.communicate()
                        store.finish_attempt(s, **job, owner=owner, status="cancelled")
                        return "cancelled"
                    if time.monotonic() >= next_beat:
                        store.heartbeat(s, **job, owner=owner)
                        next_beat = time.monotonic() + c.heartbeat_s
            except StorageError:
                log.warning("%s %s: database unavailable while watching; still waiting", kind, job_id)
        return self._after_exit(kind, job_id, owner, proc.returncode, err)

    def _after_exit(self, kind: str, job_id: str, owner: str, returncode: int, stderr: str) -> str:
        c = self.config
        job = dict(kind=kind, job_id=job_id)
        with session_scope(c.database_url) as s:
            rec = store.get_job(s, **job)
            if rec.owner != owner:
                return "lost"
            if rec.status != "running":
                return rec.status  # the child recorded its outcome
            if rec.cancel_requested:
                store.finish_attempt(s, **job, owner=owner, status="cancelled")
                return "cancelled"
            reason = describe_exit(returncode, stderr)
            if rec.attempts < c.max_attempts:
                delay = c.backoff(rec.attempts)
                message = f"attempt {rec.attempts} failed ({reason}); retrying in {delay:g} s"
                store.schedule_retry(s, **job, owner=owner, delay_s=delay, message=message)
                return "retry"
            error = f"{reason} (attempt {rec.attempts} of {c.max_attempts})"
            store.finish_attempt(s, **job, owner=owner, status="failed", error=error)
            return "failed"
