"""The in-process runner: threads in the API process that each run one job at a time in a child.

Used when no Redis is configured. Only the waiting happens here; the work runs in a spawned
interpreter (service.jobs.child), so torch never loads into the API process. One API process owns the
database's jobs in this mode, so on start every row left "running" is a leftover and goes back in the
queue; afterwards a reaper offers retries whose backoff has passed.
"""

from __future__ import annotations

import logging
import queue
import threading

from service.storage import store
from service.config import Settings
from service.storage.db.session import session_scope
from service.jobs.kinds import KINDS
from service.jobs.base import JobQueue
from service.jobs.reaper import Reaper, staging_sweeper
from service.jobs.runner import JobRunner, RunnerConfig

log = logging.getLogger(__name__)


class InlineQueue(JobQueue):
    name = "inline"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.url = settings.resolved_database_url
        self.runner = JobRunner(RunnerConfig.from_settings(settings), offer=self.enqueue)
        self.reaper = Reaper(
            self.url, offer=self.enqueue, stale_after_s=settings.job_stale_after_s,
            interval_s=settings.job_reaper_s, max_attempts=settings.job_max_attempts,
            sweep=staging_sweeper(settings),
        )
        self._pending: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    def enqueue(self, kind: str, job_id: str) -> None:
        self._pending.put((kind, job_id))

    def start(self) -> None:
        for kind in KINDS:
            with session_scope(self.url) as s:
                requeued = store.requeue_interrupted(s, kind=kind)
                leftover = store.queued_job_ids(s, kind=kind)
            if requeued:
                log.info("requeued %d interrupted %s jobs", len(requeued), kind)
            for job_id in leftover:
                self._pending.put((kind, job_id))
        for i in range(self.settings.job_concurrency):
            t = threading.Thread(target=self._loop, name=f"bitplan-runner-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        self.reaper.start()

    def stop(self) -> None:
        self._stopping.set()
        self.reaper.stop()
        for _ in self._threads:
            self._pending.put(None)
        self.runner.stop()
        for t in self._threads:
            t.join(timeout=10)
        self._threads.clear()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            job = self._pending.get()
            if job is None:
                return
            try:
                self.runner.run(*job)
            except Exception:
                log.exception("runner failed on %s %s", *job)
