"""A sharded analysis (options.shards): its shards run as sub-jobs on whichever runner is free and the
merged table equals the unsplit analysis's; cancel and failure reach every shard. On the in-process
runner (SQLite, no Redis) and on two `bitplan worker` processes over Redis + PostgreSQL."""

from __future__ import annotations

import os
import signal

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.jobs import QUEUES
from tests.utils.queue_factories import (
    Workers, job_children, job_process, queue_settings, state, submit, wait_done, wait_until,
)
from tests.utils.service_factories import table_numbers, upload_dataset, upload_model

SGN = "sampled_gauss_newton"
QUICK = {"draws": 2, "groups": 8}  # seconds of work on the digits MLP
SLOW = {"draws": 4000, "groups": 8}  # minutes: cancelled or killed long before it ends


def _shard_rows(client: TestClient, analysis_id: str) -> list[dict]:
    """The analysis's shards as GET /v1/analyses/{id} shows them ([] before the fan-out)."""
    return state(client, analysis_id)["shards"] or []


def _same_table_as_unsplit(client: TestClient, model_id: str, dataset_id: str, count: int) -> None:
    whole = submit(client, model_id, dataset_id, QUICK, metric=SGN)
    split = submit(client, model_id, dataset_id, {**QUICK, "shards": count}, metric=SGN)
    assert wait_done(client, whole["id"], timeout=300)["status"] == "succeeded"
    final = wait_done(client, split["id"], timeout=300)
    assert final["status"] == "succeeded", final["error"]
    rows = _shard_rows(client, split["id"])
    assert [(r["index"], r["status"], r["progress"]["fraction"]) for r in rows] == [(i, "succeeded", 1.0) for i in range(count)]
    assert all(r["finished_at"] is not None and r["error"] is None for r in rows)
    assert final["started_at"] <= min(r["started_at"] for r in rows)  # its fan-out's start, not its merge's
    assert state(client, whole["id"])["shards"] is None  # one job: no sub-jobs to show
    a = client.get(f"/v1/analyses/{whole['id']}/table").json()
    b = client.get(f"/v1/analyses/{split['id']}/table").json()
    assert set(table_numbers(b)) == set(table_numbers(a))
    assert table_numbers(b) == pytest.approx(table_numbers(a), rel=1e-12, abs=0)
    assert b["provenance"]["shards"] == count
    plan = {"budget": {"avg_bits": 5}}
    chosen = [client.post(f"/v1/analyses/{i}/plans", json=plan).json() for i in (split["id"], whole["id"])]
    assert [[(u["unit"], u["candidate"]) for u in c["units"]] for c in chosen] == [
        [(u["unit"], u["candidate"]) for u in chosen[1]["units"]]] * 2


@pytest.fixture
def inline_service(tmp_path, digits):
    with TestClient(create_app(queue_settings(tmp_path, None, job_concurrency=1))) as client:
        model = upload_model(client, digits).json()
        dataset = upload_dataset(client, digits.calibration_path).json()
        yield client, model["id"], dataset["id"]


@pytest.fixture(scope="module")
def refusing_service(tmp_path_factory, digits):
    """Uploads only: what is refused at submit never reaches a runner."""
    with TestClient(create_app(queue_settings(tmp_path_factory.mktemp("refusals"), None), run_jobs=False)) as client:
        model = upload_model(client, digits).json()
        dataset = upload_dataset(client, digits.calibration_path).json()
        yield client, model["id"], dataset["id"]


def test_in_process_runner_merges_shards_into_the_unsplit_table(inline_service):
    client, model_id, dataset_id = inline_service
    _same_table_as_unsplit(client, model_id, dataset_id, 3)  # one runner thread: the shards run one by one


@pytest.mark.parametrize("options, metric, message", [
    ({"shards": 0}, SGN, "must be an integer ≥ 1"),
    ({"shards": 2.5}, SGN, "must be an integer ≥ 1"),
    ({"shards": 2}, "hutchinson", "the hutchinson metric cannot be split across workers"),
    ({"shards": 129}, SGN, "129 shards but only 128 calibration samples"),
    ({"shards": 9, "max_samples": 8}, SGN, "9 shards but only 8 calibration samples"),
])
def test_bad_shards_are_refused_naming_the_field(refusing_service, options, metric, message):
    client, model_id, dataset_id = refusing_service
    r = client.post("/v1/analyses", json={"model_id": model_id, "dataset_id": dataset_id, "metric": metric,
                                          "options": options})
    assert r.status_code == 422, r.text
    assert "options.shards" in r.text and message in r.text, r.text


def test_cli_submit_sends_shards_in_the_options():
    from service.cli.bitplan import build_parser
    from service.cli.commands import submit_options

    args = build_parser().parse_args(["submit", "m.pt2", "--shards", "4", "--options", '{"draws": 2}'])
    assert submit_options(args) == {"draws": 2, "shards": 4}
    assert submit_options(build_parser().parse_args(["submit", "m.pt2"])) == {}


rq = pytest.mark.skipif(not QUEUES.available("rq"), reason="rq and redis not installed")


@pytest.fixture
def workers_service(tmp_path, postgres_url, redis_server, digits):
    """The API (no runner of its own) and a factory for `bitplan worker` processes on Redis + PostgreSQL."""
    made = []

    def make(count: int = 2, **overrides):
        settings = queue_settings(tmp_path, postgres_url, redis_server.url, **overrides)
        client = TestClient(create_app(settings)).__enter__()
        model = upload_model(client, digits).json()
        dataset = upload_dataset(client, digits.calibration_path).json()
        workers = Workers(settings, tmp_path)
        made.append((client, workers))
        workers.start(count)
        return client, workers, model["id"], dataset["id"]

    yield make
    for client, workers in made:
        workers.stop()
        client.__exit__(None, None, None)


@rq
def test_two_workers_merge_shards_into_the_unsplit_table(workers_service):
    client, workers, model_id, dataset_id = workers_service(2)
    _same_table_as_unsplit(client, model_id, dataset_id, 2)
    logs = workers.logs()
    assert "analysis_shard" in logs, logs


@rq
def test_cancelling_a_sharded_analysis_cancels_its_shards(workers_service):
    client, workers, model_id, dataset_id = workers_service(2)
    a = submit(client, model_id, dataset_id, {**SLOW, "shards": 2}, metric=SGN)
    rows = wait_until(lambda: (r := _shard_rows(client, a["id"])) and all(x["status"] == "running" for x in r) and r,
                      120, "both shards to run, one on each worker")
    for row in rows:
        job_process(row["id"])  # each shard's job process is up
    shown = wait_until(lambda: (s := state(client, a["id"]))["progress"]["fraction"] > 0 and s, 120,
                       "the analysis to show its shards' progress")
    assert shown["status"] == "running" and shown["progress"]["message"].startswith("shards: 0 of 2 done; shard ")
    r = client.post(f"/v1/analyses/{a['id']}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelled"  # waiting on its shards: at once
    wait_until(lambda: all(x["status"] == "cancelled" for x in _shard_rows(client, a["id"])), 60,
               "the shards to be cancelled")
    for row in rows:
        wait_until(lambda: not job_children(row["id"]), 30, "the shard's job process to end")
    final = state(client, a["id"])
    assert final["status"] == "cancelled" and final["error"] is None


@rq
def test_a_failed_shard_fails_the_analysis_and_cancels_the_others(workers_service):
    client, workers, model_id, dataset_id = workers_service(2, job_max_attempts=1)
    a = submit(client, model_id, dataset_id, {**SLOW, "shards": 2}, metric=SGN)
    rows = wait_until(lambda: (r := _shard_rows(client, a["id"])) and all(x["status"] == "running" for x in r) and r,
                      120, "both shards to run")
    os.kill(job_process(rows[1]["id"]), signal.SIGKILL)  # what the OOM killer does to the second shard
    final = wait_done(client, a["id"], timeout=60)
    assert final["status"] == "failed"
    assert final["error"].startswith("shard 2 of 2 failed: job process killed by signal 9"), final["error"]
    assert "attempt 1 of 1" in final["error"]
    wait_until(lambda: [x["status"] for x in _shard_rows(client, a["id"])] == ["cancelled", "failed"], 60,
               "the other shard to be cancelled")
    wait_until(lambda: not job_children(rows[0]["id"]), 30, "the cancelled shard's job process to end")


@rq
def test_a_killed_shard_is_retried_and_the_table_is_still_the_unsplit_one(workers_service):
    client, workers, model_id, dataset_id = workers_service(2, job_retry_backoff_s=1.0)
    # the kill lands while the shard's process starts or works: a few seconds of draws are enough
    options = {"draws": 30, "groups": 8}
    split = submit(client, model_id, dataset_id, {**options, "shards": 2}, metric=SGN)
    rows = wait_until(lambda: (r := _shard_rows(client, split["id"])) and r, 60, "the shards to exist")
    os.kill(job_process(rows[0]["id"]), signal.SIGKILL)  # its first attempt, wherever it got to
    final = wait_done(client, split["id"], timeout=300)
    assert final["status"] == "succeeded", final["error"]
    assert [r["attempts"] for r in _shard_rows(client, split["id"])] == [2, 1]
    assert final["attempts"] == 1  # the merge; the fan-out is not an attempt
    whole = wait_done(client, submit(client, model_id, dataset_id, options, metric=SGN)["id"], timeout=300)
    a = client.get(f"/v1/analyses/{whole['id']}/table").json()
    b = client.get(f"/v1/analyses/{split['id']}/table").json()
    assert table_numbers(b) == pytest.approx(table_numbers(a), rel=1e-12, abs=0)
