"""One attempt of one job, the same on every queue back-end: claim the row, start the child, watch it,
record what the child could not.

Why a watcher: the child may die without a word (kill -9, memory or CPU limit), a user may cancel the
job, or a reaper elsewhere may have given the row to a newer attempt. Only the process that started the
child sees all three and can act within seconds: it polls the row every `poll_s` (cancel, ownership),
marks it alive every `heartbeat_s`, and after an unrecorded exit either schedules a retry with
exponential backoff or, out of attempts, fails the job with the reason.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.storage import store
from service.storage.blobs import BlobStore
from service.config import Settings
from service.storage.db.session import session_scope
from service.errors import StorageError
from service.jobs import child
from service.jobs.child import TRANSIENT_EXIT
from service.jobs.kinds import Payload, get_kind
from service.jobs.process import Limits, kill_tree, start_child
from service.jobs.sandbox import Sandbox, sandbox_mode_for
from service.redact import redact_paths

CODE_FORMATS = ("pt2",)  # model formats whose loading is code to torch: never run outside the sandbox

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
    sandbox: bool = True  # run each child in service.jobs.sandbox (settings.sandbox, resolved at the edge)

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
            sandbox=sandbox_mode_for(settings.sandbox),
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
    # bubblewrap reports a sandboxed child killed by signal N as its own exit code 128 + N
    signal_number = -returncode if returncode < 0 else returncode - 128 if 128 < returncode < 160 else None
    if signal_number is not None:
        return f"job process killed by signal {signal_number} (memory or CPU limit, or the OOM killer?)"
    return "; ".join([f"job process exited with code {returncode}", *tail[-3:]])


class JobRunner:
    """Thread-safe: several threads may `run` different jobs at once; `stop` ends every child.
    `offer(kind, id)` hands the queue the jobs an attempt makes ready (a sharded analysis's shards,
    then its merge); without it they wait for the queue's next start or reaper sweep."""

    def __init__(self, config: RunnerConfig, offer: Callable[[str, str], None] | None = None):
        self.config = config
        self.offer = offer
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
        "skipped", "lost", "stopped", or "waiting": its work was handed to sub-jobs)."""
        c = self.config
        with session_scope(c.database_url) as s:
            owner = store.claim_job(s, kind=kind, job_id=job_id)
        if owner is None:
            return "skipped"  # cancelled, taken by another worker, already done, or backoff not over
        try:
            return self._attempt(kind, job_id, owner)
        finally:
            self._settle(kind, job_id)

    def _attempt(self, kind: str, job_id: str, owner: str) -> str:
        if get_kind(kind).fan_out is not None:
            with session_scope(self.config.database_url) as s:
                made = get_kind(kind).fan_out(s, job_id, owner)
            if made is not None:  # the work runs as these sub-jobs; this attempt holds no worker for them
                self._offer(made)
                return "waiting" if made else self._after_exit(kind, job_id, owner, 0, "")
        try:
            payload = self._prepare(kind, job_id)
        except Exception as exc:  # noqa: BLE001 - a row or blob that cannot be read fails (or retries) the job
            log.exception("%s %s: could not prepare the job", kind, job_id)
            message = f"{type(exc).__name__}: {exc}"
            if child.is_transient(exc):
                return self._after_exit(kind, job_id, owner, TRANSIENT_EXIT, f"transient: {message}")
            return self._after_exit(kind, job_id, owner, 1, "", {"outcome": "failed", "error": message})
        try:
            return self._start(kind, job_id, owner, payload)
        finally:
            for path in payload.output_paths():  # moved into the store, or not wanted: never left
                shutil.rmtree(path, ignore_errors=True)

    def _start(self, kind: str, job_id: str, owner: str, payload: Payload) -> str:
        c = self.config
        missing = [Path(p).name for p in payload.input_paths() if not Path(p).exists()]
        if missing:  # the sandbox could not even bind it: say so instead of retrying a child that cannot start
            error = f"blob store: {', '.join(missing)} is missing (deleted from BITPLAN_DATA_DIR?)"
            return self._after_exit(kind, job_id, owner, 1, "", {"outcome": "failed", "error": error})
        sandbox = Sandbox(read_only=payload.input_paths(), writable=payload.output_paths()) if c.sandbox else None
        if sandbox is None and payload.request.model.format in CODE_FORMATS:
            error = ("model.format: a pt2 model is only ever loaded in the sandbox, which is switched off on this "
                     "server (BITPLAN_SANDBOX=off)")
            return self._after_exit(kind, job_id, owner, 1, "", {"outcome": "failed", "error": error})
        proc = start_child([kind, job_id], limits=c.limits, sandbox=sandbox)
        with self._lock:
            self._children.add(proc)
        try:
            outcome = self._watch(kind, job_id, owner, proc, payload)
        finally:
            if proc.poll() is None:
                kill_tree(proc)
                proc.wait()
            with self._lock:
                self._children.discard(proc)
        log.info("%s %s (pid %d): %s", kind, job_id, proc.pid, outcome)
        return outcome

    def _offer(self, jobs: list[tuple[str, str]]) -> None:
        for job in jobs:
            if self.offer is not None:
                self.offer(*job)

    def _settle(self, kind: str, job_id: str) -> None:
        """After an attempt of a sub-job: the kind's `settle` decides its parent (the merge to offer, or
        a failure to record). Never raises: the reapers settle again on their next sweep."""
        settle = get_kind(kind).settle
        if settle is None:
            return
        try:
            with session_scope(self.config.database_url) as s:
                ready = settle(s, job_id)
            self._offer(ready)
        except Exception:  # noqa: BLE001 - the database may be down; the reaper's sweep retries
            log.exception("%s %s: could not settle its parent job", kind, job_id)

    def _blobs(self) -> BlobStore:
        return BlobStore(self.config.data_dir / "blobs")

    def _prepare(self, kind: str, job_id: str) -> Payload:
        """The child's request, read here (the kind's `build`): the child never sees the database."""
        with session_scope(self.config.database_url) as s:
            return get_kind(kind).build(s, job_id, self._blobs())

    def _watch(self, kind: str, job_id: str, owner: str, proc: subprocess.Popen, payload: Payload) -> str:
        c = self.config
        job = dict(kind=kind, job_id=job_id)
        stream = _ChildStream(proc, json.dumps(payload.to_dict()))
        next_beat = time.monotonic() + c.heartbeat_s
        reported = None
        while True:
            if stream.wait(c.poll_s):
                break
            if self._stopping.is_set():
                return "stopped"
            moved = False
            try:
                with session_scope(c.database_url) as s:
                    rec = store.get_job(s, **job)
                    if rec.owner != owner:
                        kill_tree(proc)  # a reaper gave the job to a newer attempt: this one must not finish
                        return "lost"
                    if rec.status != "running":  # finished elsewhere (cancelled by a reaper's decision)
                        kill_tree(proc)
                        return rec.status
                    progress = stream.progress
                    if progress is not None and progress != reported:
                        store.report_progress(s, **job, fraction=progress[0], message=progress[1], owner=owner)
                        reported = progress
                        next_beat = time.monotonic() + c.heartbeat_s
                        moved = True
                    if rec.cancel_requested:
                        kill_tree(proc)
                        proc.wait()
                        store.finish_attempt(s, **job, owner=owner, status="cancelled")
                        return "cancelled"
                    if time.monotonic() >= next_beat:
                        store.heartbeat(s, **job, owner=owner)
                        next_beat = time.monotonic() + c.heartbeat_s
                        _touch(payload.output_paths())  # the staging sweep never takes a live folder
                # a sub-job's parent takes its share in a transaction of its own, after the sub-job's
                # row is committed (service.storage.shards: the parent's row is always locked first)
                if moved and get_kind(kind).progress is not None:
                    with session_scope(c.database_url) as s:
                        get_kind(kind).progress(s, job_id)
            except StorageError:
                log.warning("%s %s: database unavailable while watching; still waiting", kind, job_id)
        return self._after_exit(kind, job_id, owner, proc.returncode, stream.stderr(), stream.outcome, payload)

    def _after_exit(self, kind: str, job_id: str, owner: str, returncode: int, stderr: str,
                    outcome: dict | None = None, payload: Payload | None = None) -> str:
        """Record what the child said (its outcome line), or decide on a retry when it said nothing.
        A kind that writes a file has it moved into the blob store first (its `collect`), and removed
        again if the success cannot be recorded (its `discard`), so a row never names a missing file."""
        c = self.config
        job_kind = get_kind(kind)
        job = dict(kind=kind, job_id=job_id)
        with session_scope(c.database_url) as s:
            rec = store.get_job(s, **job)
            if rec.owner != owner:
                return "lost"
            if rec.status != "running":
                return rec.status
            if rec.cancel_requested:
                store.finish_attempt(s, **job, owner=owner, status="cancelled")
                return "cancelled"
            if outcome is not None and outcome.get("outcome") in ("succeeded", "failed"):
                status = outcome["outcome"]
                error = redact_paths(outcome["error"]) if outcome.get("error") else None
                outputs = outcome.get("outputs") if status == "succeeded" else None
                if status == "succeeded" and job_kind.collect is not None:
                    try:
                        outputs = job_kind.collect(job_id, payload, outputs or {}, self._blobs())
                    except OSError as exc:  # the child said it wrote a file that is not there
                        status, outputs = "failed", None
                        error = redact_paths(f"the job's output could not be stored: {exc}")
                recorded = store.finish_attempt(s, **job, owner=owner, status=status, error=error, outputs=outputs)
                if not recorded and status == "succeeded" and job_kind.discard is not None:
                    s.expire_all()
                    job_kind.discard(s, job_id, outputs, self._blobs())
                return status
            reason = redact_paths(describe_exit(returncode, stderr))
            if rec.attempts < c.max_attempts:
                delay = c.backoff(rec.attempts)
                message = f"attempt {rec.attempts} failed ({reason}); retrying in {delay:g} s"
                store.schedule_retry(s, **job, owner=owner, delay_s=delay, message=message)
                return "retry"
            error = f"{reason} (attempt {rec.attempts} of {c.max_attempts})"
            store.finish_attempt(s, **job, owner=owner, status="failed", error=error)
            return "failed"


def _touch(paths: list[str]) -> None:
    for path in paths:
        try:
            os.utime(path)
        except OSError:
            pass


class _ChildStream:
    """Feeds the child its request and reads its answer on threads, so the watcher never blocks: the
    latest progress line, the outcome line, and the tail of stderr (bounded, whatever the child prints)."""

    def __init__(self, proc: subprocess.Popen, request: str):
        self.proc = proc
        self.progress: tuple[float, str] | None = None
        self.outcome: dict | None = None
        self._err: deque[str] = deque(maxlen=200)
        self._threads = [threading.Thread(target=fn, daemon=True) for fn in (self._feed, self._read, self._drain)]
        self._request = request
        for t in self._threads:
            t.start()

    def _feed(self) -> None:
        try:
            self.proc.stdin.write(self._request)
            self.proc.stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass  # the child died before reading it; its exit says why

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if not isinstance(message, dict):
                continue
            if "outcome" in message:
                self.outcome = message
            elif "progress" in message:
                self.progress = (float(message["progress"]), str(message.get("message", "")))

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self._err.append(line.rstrip("\n"))

    def wait(self, timeout: float) -> bool:
        """True once the child has exited and its output is read."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        for t in self._threads:
            t.join(timeout=30)
        return True

    def stderr(self) -> str:
        return "\n".join(self._err)
