"""The in-process runner: threads in the API process that each run one job at a time in a child.

Used when no Redis is configured. Only the waiting happens here; the work runs in a spawned
interpreter (service.jobs.child), so torch never loads into the API process.
"""

from __future__ import annotations

import logging
import queue
import threading

from service.config import Settings
from service.db.session import session_scope
from service.jobs.base import JobQueue
from service.jobs.process import Limits, kill_tree, start_child
from service import store

log = logging.getLogger(__name__)


class InlineQueue(JobQueue):
    name = "inline"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.url = settings.resolved_database_url
        self._pending: queue.Queue[str | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._children: set = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def enqueue(self, analysis_id: str) -> None:
        self._pending.put(analysis_id)

    def start(self) -> None:
        with session_scope(self.url) as s:
            # Nothing else runs this database's jobs in inline mode, so any "running" row is a leftover.
            requeued = store.requeue_interrupted(s)
            leftover = store.queued_analysis_ids(s)
        if requeued:
            log.info("requeued %d interrupted analyses", len(requeued))
        for analysis_id in leftover:
            self._pending.put(analysis_id)
        for i in range(self.settings.job_concurrency):
            t = threading.Thread(target=self._loop, name=f"bitplan-runner-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stopping.set()
        for _ in self._threads:
            self._pending.put(None)
        with self._lock:
            for proc in list(self._children):
                kill_tree(proc)
        for t in self._threads:
            t.join(timeout=10)
        self._threads.clear()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            analysis_id = self._pending.get()
            if analysis_id is None:
                return
            try:
                self._run(analysis_id)
            except Exception:
                log.exception("runner failed on analysis %s", analysis_id)

    def _run(self, analysis_id: str) -> None:
        with session_scope(self.url) as s:
            if not store.claim_analysis(s, analysis_id=analysis_id):
                return
        s = self.settings
        env = {"BITPLAN_DATABASE_URL": self.url, "BITPLAN_DATA_DIR": str(s.data_dir.resolve())}
        proc = start_child(
            ["analysis", analysis_id], limits=Limits(s.job_memory_limit_mb, s.job_cpu_limit_s), env=env
        )
        with self._lock:
            self._children.add(proc)
        try:
            _, err = proc.communicate()
        finally:
            with self._lock:
                self._children.discard(proc)
        if self._stopping.is_set():
            return  # left "running": the next start requeues it
        with session_scope(self.url) as db:
            rec = store.get_analysis(db, analysis_id=analysis_id)
            if rec.status == "running":  # the child died before it could record an outcome
                tail = (err or "").strip().splitlines()[-5:]
                reason = f"job process exited with code {proc.returncode}"
                if proc.returncode and proc.returncode < 0:
                    reason += " (killed: memory or CPU limit?)"
                store.finish_analysis(
                    db, analysis_id=analysis_id, status="failed", error="; ".join([reason, *tail])
                )
