"""`bitplan worker` processes on real PostgreSQL and Redis: throughput, and no lost or doubled work when a
worker is killed with SIGKILL mid-job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.jobs import QUEUES
from tests.utils.queue_factories import (
    LONG, SMALL, Workers, completions, install_completion_counter, job_children, job_launcher, queue_settings,
    state, submit, wait_done, wait_until,
)
from tests.utils.service_factories import upload_dataset, upload_model

pytestmark = pytest.mark.skipif(not QUEUES.available("rq"), reason="rq and redis not installed")


@pytest.fixture
def service(tmp_path, postgres_url, redis_server, digits):
    settings = queue_settings(tmp_path, postgres_url, redis_server.url)
    with TestClient(create_app(settings)) as client:  # migrates the database, starts the API's reaper
        install_completion_counter(postgres_url)
        model = upload_model(client, digits).json()
        dataset = upload_dataset(client, digits.calibration_path).json()
        workers = Workers(settings, tmp_path)
        try:
            yield client, workers, model["id"], dataset["id"], postgres_url
        finally:
            workers.stop()


@pytest.mark.slow
def test_ten_analyses_through_two_workers(service):
    client, workers, model_id, dataset_id, url = service
    workers.start(2)
    started = time.monotonic()
    # each job is a fresh sandboxed process (about 4 s of interpreter and torch start-up on 2 cores)
    ids = [submit(client, model_id, dataset_id, SMALL)["id"] for _ in range(10)]
    finals = [wait_done(client, i, timeout=240) for i in ids]
    elapsed = time.monotonic() - started
    print(f"\n10 analyses through 2 workers: {elapsed:.1f} s")
    assert [f["status"] for f in finals] == ["succeeded"] * 10, [f["error"] for f in finals]
    assert all(f["attempts"] == 1 for f in finals)
    assert completions(url) == {i: ["succeeded"] for i in ids}
    # RQ logs "Job OK" just after the job function returns, a moment after the row says succeeded.
    wait_until(lambda: workers.logs().count("Job OK") == 10, 15, "both workers to log all 10 jobs")
    assert all(p.poll() is None for p in workers.procs)
    per_worker = [(workers.log_dir / f"worker-{k}.log").read_text().count("Job OK") for k in range(2)]
    print(f"jobs per worker: {per_worker}")
    assert all(n > 0 for n in per_worker)


def test_worker_killed_mid_job_its_job_runs_elsewhere(service):
    client, workers, model_id, dataset_id, url = service
    workers.start(2)
    # The victim is LONG on any machine (it cannot finish before the kill); its second attempt is cancelled
    # once it runs. The two small jobs queued behind it are run by the surviving worker first.
    victim = submit(client, model_id, dataset_id, LONG)["id"]
    others = [submit(client, model_id, dataset_id, SMALL)["id"] for _ in range(2)]
    worker_pids = {p.pid for p in workers.procs}
    _, worker_pid = job_launcher(victim, worker_pids)
    wait_until(lambda: state(client, victim)["progress"]["fraction"] > 0.0001, 60, "the first job to work")
    assert state(client, victim)["status"] == "running"
    os.kill(worker_pid, signal.SIGKILL)
    killed = time.monotonic()
    # bwrap, the sandbox's init and the job's python: all of them die with the worker
    wait_until(lambda: not job_children(victim), 5, "the killed worker's job processes to die with it")
    wait_until(lambda: (s := state(client, victim))["status"] == "queued" or s["attempts"] == 2, 30,
               "a reaper to notice the silent job")
    detected = time.monotonic() - killed
    wait_until(lambda: (s := state(client, victim))["attempts"] == 2 and s["status"] == "running", 90,
               "the job to be claimed again")
    recovered = time.monotonic() - killed
    job_launcher(victim, worker_pids - {worker_pid})  # the second attempt runs under the surviving worker
    finals = [wait_done(client, i, timeout=180) for i in others]
    print(f"\nworker killed: requeued after {detected:.1f} s (stale after 3 s), running again on the other "
          f"worker after {recovered:.1f} s (behind the jobs queued before it)")
    assert [f["status"] for f in finals] == ["succeeded"] * 2, [f["error"] for f in finals]
    assert client.post(f"/v1/analyses/{victim}/cancel").status_code == 202
    final = wait_done(client, victim, timeout=30)
    assert final["status"] == "cancelled" and final["attempts"] == 2
    # none lost, none completed twice
    assert completions(url) == {victim: ["cancelled"], **{i: ["succeeded"] for i in others}}


def test_worker_processes_never_import_torch():
    code = (
        "import sys, service.cli, service.jobs.rq_worker, service.jobs.rq_tasks, service.jobs.runner, rq;"
        "from service.api.app import create_app;"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
