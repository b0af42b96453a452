"""The Redis back-end: RQ carries job kinds and ids (JSON serializer, nothing else) to `bitplan worker`s.

Why RQ's SimpleWorker: the job function only claims the row and watches a spawned child
(service.jobs.runner); torch lives in that child alone. Nothing is forked from a process holding torch,
database pools or reaper threads, and a `kill -9` of a worker takes its child with it (death signal),
so the reapers see the job's heartbeat stop and offer it again.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from service.storage import store
from service.config import Settings
from service.storage.db.models import utcnow
from service.storage.db.session import session_scope
from service.jobs.kinds import KINDS
from service.jobs.base import JobQueue
from service.jobs.reaper import Reaper, staging_sweeper

log = logging.getLogger(__name__)

JOB_FUNCTION = "service.jobs.rq_tasks.run_job"
_PENDING = ("queued", "started", "deferred", "scheduled")


def rq_job_id(kind: str, job_id: str) -> str:
    """One RQ job id per row, so the reaper can ask Redis whether a queued row's message still exists."""
    return f"bitplan-{kind}-{job_id}"


class RQQueue(JobQueue):
    name = "rq"

    @classmethod
    def available(cls) -> bool:
        try:
            import redis  # noqa: F401
            import rq  # noqa: F401
        except ImportError:
            return False
        return True

    def __init__(self, settings: Settings):
        if not settings.redis_url:
            raise ValueError("redis_url: the rq queue needs BITPLAN_REDIS_URL")
        self.settings = settings
        self.url = settings.resolved_database_url
        # A job never outlives its CPU budget by much; RQ's own timeout is only the last resort.
        self.job_timeout = settings.job_cpu_limit_s * 2 + 600
        self.reaper = Reaper(
            self.url, offer=self.enqueue, stale_after_s=settings.job_stale_after_s,
            interval_s=settings.job_reaper_s, max_attempts=settings.job_max_attempts, lost=self.lost_jobs,
            sweep=staging_sweeper(settings),
        )
        self.lost_after = timedelta(seconds=settings.job_stale_after_s)
        self._queue = None
        self._lock = threading.Lock()

    def rq_queue(self):
        """The RQ queue object, made on first use (redis-py connections are pooled and thread-safe)."""
        with self._lock:
            if self._queue is None:
                from redis import Redis
                from rq import Queue
                from rq.serializers import JSONSerializer

                # A bounded connect: a Redis that is down must not hang the request that submits a job.
                conn = Redis.from_url(self.settings.redis_url, socket_connect_timeout=5)
                self._queue = Queue(self.settings.rq_queue_name, connection=conn, serializer=JSONSerializer)
            return self._queue

    def enqueue(self, kind: str, job_id: str) -> None:
        """A failed enqueue is logged, not raised: the committed row is the truth. It is marked to be
        offered again after the retry backoff, which every reaper (API and workers) does, so a job
        submitted while Redis is down runs once Redis is back. A duplicate offer is harmless: only one
        claim can succeed."""
        try:
            self.rq_queue().enqueue(
                JOB_FUNCTION, kind, job_id, job_timeout=self.job_timeout, result_ttl=3600, failure_ttl=7 * 86400,
                description=f"{kind} {job_id}", job_id=rq_job_id(kind, job_id),
            )
        except Exception:
            log.exception("could not enqueue %s %s on Redis; it stays queued and is offered again", kind, job_id)
            delay = max(self.settings.job_retry_backoff_s, self.settings.job_reaper_s)
            try:
                with session_scope(self.url) as s:
                    store.defer_offer(s, kind=kind, job_id=job_id, delay_s=delay)
            except Exception:  # the database is down too: the next start offers every queued row
                log.exception("could not mark %s %s to be offered again", kind, job_id)

    def lost_jobs(self) -> list[tuple[str, str]]:
        """Queued rows (not waiting for a backoff, older than the grace period) whose RQ job is gone or no
        longer pending: the message was lost with Redis's memory. A row offered a moment ago is within the
        grace period; one a worker is about to claim has its job `started`, so neither is offered twice."""
        from rq.job import Job

        cutoff = utcnow() - self.lost_after
        candidates = []
        for kind in KINDS:
            with session_scope(self.url) as s:
                ids = store.queued_job_ids(s, kind=kind, created_before=cutoff)
            candidates += [(kind, job_id) for job_id in ids]
        if not candidates:
            return []
        queue = self.rq_queue()
        jobs = Job.fetch_many([rq_job_id(k, i) for k, i in candidates], connection=queue.connection,
                              serializer=queue.serializer)
        return [c for c, job in zip(candidates, jobs) if job is None or job.get_status(refresh=False) not in _PENDING]

    def start(self) -> None:
        for kind in KINDS:
            with session_scope(self.url) as s:
                leftover = store.queued_job_ids(s, kind=kind)
            for job_id in leftover:  # messages lost with a Redis that restarted empty
                self.enqueue(kind, job_id)
        self.reaper.start()

    def stop(self) -> None:
        self.reaper.stop()
