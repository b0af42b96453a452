"""Queue loss recovers by itself (issue 12, finding 7): Redis flushed, or restarted without persistence,
forgets every queued message and every worker registration; the reapers offer the stranded rows again
after a grace period, and workers register again, so /readyz counts them."""

from __future__ import annotations

import time

import pytest
import redis
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.storage.db import migrate
from service.jobs import QUEUES
from service.jobs.rq_queue import RQQueue
from tests.service.test_queue_redis_down import queued_analysis
from tests.utils.queue_factories import SMALL, Workers, queue_settings, state, submit, wait_done, wait_until
from tests.utils.servers import start_redis
from tests.utils.service_factories import upload_dataset, upload_model

pytestmark = pytest.mark.skipif(not QUEUES.available("rq"), reason="rq and redis not installed")


@pytest.fixture
def own_redis():
    """A Redis of this test's own: it is flushed and restarted."""
    server = start_redis()
    yield server
    server.stop()


def restart(server):
    port = server.port
    server.stop()
    return start_redis(port)


def queued_rq_args(queue: RQQueue) -> list[tuple]:
    return [tuple(j.args) for j in queue.rq_queue().get_jobs()]


@pytest.mark.parametrize("loss", ["flushall", "restart"])
def test_reaper_offers_again_the_queued_rows_whose_message_redis_lost(tmp_path, own_redis, loss):
    settings = queue_settings(tmp_path, None, own_redis.url, job_stale_after_s=0.5, job_reaper_s=0.1)
    url = settings.resolved_database_url
    migrate.upgrade(url)
    job_id = queued_analysis(url)
    queue = RQQueue(settings)
    queue.enqueue("analysis", job_id)
    time.sleep(0.6)  # past the grace period: the message is still there, so nothing is offered
    assert queue.reaper.run_once() == []
    assert queued_rq_args(queue) == [("analysis", job_id)]

    if loss == "flushall":
        redis.Redis.from_url(own_redis.url).flushall()
    else:
        own_redis = restart(own_redis)
        queue._queue = None  # a new connection pool to the new server (redis-py would reconnect anyway)
    assert queued_rq_args(queue) == []

    assert queue.reaper.run_once() == [("analysis", job_id)]
    assert queued_rq_args(queue) == [("analysis", job_id)]
    assert queue.reaper.run_once() == []  # offered once, not on every sweep
    if loss == "restart":
        own_redis.stop()


def test_a_fresh_row_is_not_offered_twice_within_the_grace_period(tmp_path, own_redis):
    settings = queue_settings(tmp_path, None, own_redis.url, job_stale_after_s=60)
    url = settings.resolved_database_url
    migrate.upgrade(url)
    job_id = queued_analysis(url)
    queue = RQQueue(settings)
    redis.Redis.from_url(own_redis.url).flushall()  # as if the API crashed between commit and enqueue
    assert queue.reaper.run_once() == []  # too young to call lost: its offer may be on its way
    assert queue.lost_jobs() == []
    assert job_id


def readiness(client) -> dict:
    return client.get("/readyz").json()["checks"]["worker"]


def test_jobs_and_workers_survive_a_flush_and_a_restart(tmp_path, postgres_url, own_redis, digits):
    settings = queue_settings(tmp_path, postgres_url, own_redis.url)
    with TestClient(create_app(settings)) as client:  # the API's reaper runs the lost-message sweep too
        model = upload_model(client, digits).json()["id"]
        dataset = upload_dataset(client, digits.calibration_path).json()["id"]
        stranded = submit(client, model, dataset, SMALL)["id"]  # no worker yet: its message waits in Redis
        redis.Redis.from_url(own_redis.url).flushall()
        workers = Workers(settings, tmp_path)
        try:
            workers.start(1)
            final = wait_done(client, stranded, timeout=120)
            assert final["status"] == "succeeded", final["error"]
            wait_until(lambda: readiness(client)["status"] == "ok", 30, "the worker to be counted")

            own_redis = restart(own_redis)
            wait_until(lambda: readiness(client)["status"] == "ok", 30, "the worker to register again")
            assert readiness(client)["detail"] == "1 RQ worker(s) registered"
            after = submit(client, model, dataset, SMALL)["id"]
            final = wait_done(client, after, timeout=120)
            assert final["status"] == "succeeded", final["error"]
            assert state(client, stranded)["attempts"] == 1
        finally:
            workers.stop()
            own_redis.stop()
