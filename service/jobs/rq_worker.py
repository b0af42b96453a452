"""`bitplan worker`: RQ workers on any machine that shares the database, Redis and the blob store.

One worker process runs one job at a time (RQ SimpleWorker: no fork; the job's torch work runs in a
spawned child). `--concurrency N` starts N such processes under this one. Each worker also runs a
reaper, so a dead worker's job is noticed by any survivor. `--burst` quits when the queue is empty
(a retry still waiting for its backoff is then left to the API's reaper and the next worker).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading

from service.config import Settings

log = logging.getLogger(__name__)


def run_worker(settings: Settings, *, burst: bool = False, concurrency: int = 1) -> int:
    if not settings.redis_url:
        print("bitplan worker: set BITPLAN_REDIS_URL (the API must use the same Redis)", file=sys.stderr)
        return 2
    if concurrency > 1:
        return _supervise(burst=burst, concurrency=concurrency)
    return _work(settings, burst=burst)


def _work(settings: Settings, *, burst: bool) -> int:
    from rq import SimpleWorker

    from service.jobs import rq_tasks
    from service.jobs.rq_queue import RQQueue
    from service.jobs.runner import JobRunner, RunnerConfig

    queue = RQQueue(settings)  # its reaper offers stale and retried jobs back to Redis
    runner = JobRunner(RunnerConfig.from_settings(settings), offer=queue.enqueue)  # a sharded analysis's parts
    rq_tasks.install(runner)
    rq = queue.rq_queue()
    worker = SimpleWorker([rq], connection=rq.connection, serializer=rq.serializer)
    queue.reaper.start()
    stop = threading.Event()
    keeper = threading.Thread(target=_keep_registered, args=(worker, stop, settings.job_reaper_s), daemon=True)
    keeper.start()
    try:
        worker.work(burst=burst, logging_level="INFO")
    finally:
        stop.set()
        queue.reaper.stop()
        runner.stop()
    return 0


def _keep_registered(worker, stop: threading.Event, every: float) -> None:
    """Register the worker again when Redis forgot it (flushed, or restarted without persistence): RQ
    only refreshes the TTL of its registration, so without this /readyz and `rq info` would count no
    worker while this one runs. A dead worker's key keeps its `death` field, so it is never revived."""
    while not stop.wait(every):
        if worker.birth_date is None:
            continue  # work() has not registered yet
        try:
            if not worker.connection.exists(worker.key):
                worker.register_birth()
                log.warning("worker %s: registration was gone from Redis; registered again", worker.name)
        except Exception:  # Redis down: the next tick tries again
            pass


def _supervise(*, burst: bool, concurrency: int) -> int:
    args = [sys.executable, "-m", "service.cli", "worker", "--concurrency", "1", *(["--burst"] if burst else [])]
    procs = [subprocess.Popen(args) for _ in range(concurrency)]

    def forward(signum, _frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return max(p.wait() for p in procs)
