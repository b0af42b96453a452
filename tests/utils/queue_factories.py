"""Helpers for the queue tests: fast job timings, `bitplan worker` subprocesses, job child processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from fastapi.testclient import TestClient

from service.config import Settings

# Heartbeats, polls and reapers on a test's time scale (production defaults are seconds to tens of seconds).
FAST = dict(
    job_heartbeat_s=0.5, job_stale_after_s=3.0, job_poll_s=0.2, job_reaper_s=0.5, job_retry_backoff_s=1.0,
    job_max_attempts=3, sse_keepalive_s=0.3,
)
# hutchinson workloads (submit names the metric): a probe count sets how long a job runs
SMALL = {"min_probes": 8, "max_probes": 16, "probe_batch": 8}  # about a second of work on digits
LONG = {"min_probes": 20000, "max_probes": 20000, "probe_batch": 16}  # a minute or more: cancelled or killed


def queue_settings(tmp_path: Path, database_url: str | None, redis_url: str | None = None, **overrides) -> Settings:
    values = dict(FAST, data_dir=tmp_path / "data", database_url=database_url, redis_url=redis_url)
    if redis_url:
        values["rq_queue_name"] = f"test-{uuid.uuid4().hex[:8]}"
    values.update(overrides)
    return Settings(_env_file=None, **values)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a `bitplan worker` subprocess the same settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BITPLAN_")}
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"BITPLAN_{name.upper()}"] = str(value)
    env["BITPLAN_DATA_DIR"] = str(settings.data_dir.resolve())
    env["BITPLAN_DATABASE_URL"] = settings.resolved_database_url
    return env


class Workers:
    """`bitplan worker` processes, each logging to its own file."""

    def __init__(self, settings: Settings, log_dir: Path):
        self.env = settings_env(settings)
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []

    def start(self, count: int = 1) -> list[subprocess.Popen]:
        started = []
        for _ in range(count):
            log = open(self.log_dir / f"worker-{len(self.procs)}.log", "w")
            proc = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "worker"], env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )
            self.procs.append(proc)
            started.append(proc)
        return started

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
                p.send_signal(signal.SIGINT)  # cold shutdown: do not wait for a job
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def logs(self) -> str:
        return "\n".join(f.read_text() for f in sorted(self.log_dir.glob("worker-*.log")))


def job_children(analysis_id: str) -> list[tuple[int, int]]:
    """(pid, parent pid) of live processes carrying `service.jobs.child analysis ID` in their command line.
    In the sandbox these are three: bwrap (the runner's child), bwrap again (the init of the job's PID
    namespace) and the job's own python; without it, just the python."""
    return [(pid, ppid) for pid, ppid, _ in _job_processes(analysis_id)]


def job_process(analysis_id: str, timeout: float = 60) -> int:
    """The job's own python process, the one the kernel's OOM killer would pick (not a bwrap around it)."""
    found = wait_until(
        lambda: [pid for pid, _, program in _job_processes(analysis_id) if program != "bwrap"], timeout,
        "the job's python process",
    )
    assert len(found) == 1, found
    return found[0]


def job_launcher(analysis_id: str, parents: set[int], timeout: float = 60) -> tuple[int, int]:
    """(pid, parent pid) of the job's process started by one of `parents` (a worker): the outer bwrap in
    the sandbox, else the job's python."""
    found = wait_until(
        lambda: [(pid, ppid) for pid, ppid, _ in _job_processes(analysis_id) if ppid in parents], timeout,
        "the job's process under a worker",
    )
    assert len(found) == 1, found
    return found[0]


def _job_processes(analysis_id: str) -> list[tuple[int, int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if b"service.jobs.child" in cmd and analysis_id.encode() in cmd:
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if state != "Z":
                found.append((int(entry.name), int(ppid), os.path.basename(cmd[0].decode(errors="replace"))))
    return found


def wait_until(predicate, timeout: float, what: str, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def submit(client: TestClient, model_id: str, dataset_id: str, options: dict, metric: str = "hutchinson") -> dict:
    r = client.post("/v1/analyses", json={"model_id": model_id, "dataset_id": dataset_id, "metric": metric,
                                          "options": options})
    assert r.status_code == 202, r.text
    return r.json()


def state(client: TestClient, analysis_id: str) -> dict:
    return client.get(f"/v1/analyses/{analysis_id}").json()


def wait_finished(client: TestClient, url: str, timeout: float = 120) -> dict:
    """The job at `url` (an analysis, evaluation or export) once it is succeeded, failed or cancelled."""
    return wait_until(
        lambda: (s := client.get(url).json())["status"] in ("succeeded", "failed", "cancelled") and s,
        timeout, f"{url} to finish", every=0.1,
    )


def wait_done(client: TestClient, analysis_id: str, timeout: float = 120) -> dict:
    return wait_finished(client, f"/v1/analyses/{analysis_id}", timeout)


def install_completion_counter(database_url: str) -> None:
    """PostgreSQL trigger: one row per terminal write to an analysis (a new finished_at), so a test can
    prove no job was completed twice, whatever the code under test believes it did."""
    import psycopg

    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE test_completions (analysis_id text, status text, at timestamptz)")
        conn.execute("""
            CREATE FUNCTION test_count_completion() RETURNS trigger AS $$
            BEGIN
              INSERT INTO test_completions VALUES (NEW.id, NEW.status, NEW.finished_at);
              RETURN NEW;
            END $$ LANGUAGE plpgsql""")
        conn.execute("""
            CREATE TRIGGER test_completion AFTER UPDATE ON analyses FOR EACH ROW
            WHEN (NEW.finished_at IS DISTINCT FROM OLD.finished_at AND NEW.finished_at IS NOT NULL)
            EXECUTE FUNCTION test_count_completion()""")


def completions(database_url: str) -> dict[str, list[str]]:
    import psycopg

    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT analysis_id, status FROM test_completions ORDER BY at").fetchall()
    out: dict[str, list[str]] = {}
    for analysis_id, status in rows:
        out.setdefault(analysis_id, []).append(status)
    return out
