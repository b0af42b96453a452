"""The reaper: one cheap periodic query in every worker and in the API process.

Why everywhere: a worker killed with -9 cannot say so, and the machine it ran on may be gone. Any live
process sharing the database notices its job's heartbeat went silent, puts the row back in the queue
(each row by one conditional update, so concurrent reapers never both win) and offers it again. The
same loop offers retries whose backoff has passed, so retries need no scheduler in the queue itself,
and (where the back-end can tell, `lost`) queued rows whose queue message is gone: a Redis flushed or
restarted without persistence forgets every message, and nothing else would ever offer those rows again.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from datetime import timedelta

from service.storage import store
from service.storage.db.session import session_scope
from service.jobs.kinds import KINDS

log = logging.getLogger(__name__)


def staging_sweeper(settings) -> Callable[[], int]:
    """The blob store's sweep of killed uploads' leftovers, older than settings.staging_grace_s."""
    from service.storage.blobs import BlobStore

    return functools.partial(BlobStore(settings.data_dir / "blobs").sweep_staging, settings.staging_grace_s)


class Reaper:
    def __init__(
        self,
        database_url: str,
        *,
        offer: Callable[[str, str], None],
        stale_after_s: float,
        interval_s: float,
        max_attempts: int | None = None,
        lost: Callable[[], list[tuple[str, str]]] | None = None,
        sweep: Callable[[], object] | None = None,
    ):
        self.database_url = database_url
        self.offer = offer
        self.lost = lost
        self.sweep = sweep  # housekeeping on the same tick: killed uploads' staging files
        self.stale_after = timedelta(seconds=stale_after_s)
        self.interval_s = interval_s
        self.max_attempts = max_attempts
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> list[tuple[str, str]]:
        """One sweep over every job kind; returns the (kind, id) pairs offered again."""
        offered = []
        for kind in KINDS:
            with session_scope(self.database_url) as s:
                stale = store.requeue_interrupted(
                    s, kind=kind, stale_after=self.stale_after, max_attempts=self.max_attempts
                )
                due = store.release_due_retries(s, kind=kind)
            if stale:
                log.warning("requeued %d %s jobs whose worker went silent: %s", len(stale), kind, ", ".join(stale))
            for job_id in [*stale, *due]:
                self.offer(kind, job_id)
                offered.append((kind, job_id))
        for job_kind in KINDS.values():  # jobs waiting on sub-jobs: one the reaper just failed, a lost offer
            if job_kind.sweep is not None:
                with session_scope(self.database_url) as s:
                    ready = job_kind.sweep(s)
                for job in ready:
                    self.offer(*job)
                    offered.append(job)
        lost = [job for job in (self.lost() if self.lost else []) if job not in offered]
        if lost:
            log.warning("re-offering %d queued jobs whose queue message is gone: %s", len(lost),
                        ", ".join(f"{k} {i}" for k, i in lost))
        for kind, job_id in lost:
            self.offer(kind, job_id)
            offered.append((kind, job_id))
        return offered

    def start(self) -> None:
        self._housekeeping()  # at start, then on every tick
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="bitplan-reaper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _housekeeping(self) -> None:
        if self.sweep is None:
            return
        try:
            self.sweep()
        except Exception:  # a file system hiccup: the next tick sweeps again
            log.exception("staging sweep failed")

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.run_once()
            except Exception:  # a failed sweep is retried at the next tick
                log.exception("reaper sweep failed")
            self._housekeeping()
