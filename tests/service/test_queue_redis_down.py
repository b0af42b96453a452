"""No lost work: a job submitted while Redis is down is offered again, and runs, once Redis is back."""

from __future__ import annotations

import time

from service.storage import store
from service.storage.db import migrate
from service.storage.db.models import AnalysisRecord, ModelRecord
from service.storage.db.session import session_scope
from service.jobs.rq_queue import RQQueue
from tests.utils.queue_factories import queue_settings
from tests.utils.servers import free_port


def queued_analysis(url: str) -> str:
    with session_scope(url) as s:
        model = ModelRecord(name="m", sha256="0" * 64, format="safetensors", architecture="mlp", hyperparams={},
                            size_bytes=0, layers=[])
        s.add(model)
        s.flush()
        rec = AnalysisRecord(model_id=model.id, candidates=["int4"], metric="hutchinson", options={}, seed=0)
        s.add(rec)
        s.flush()
        return rec.id


def test_offer_that_failed_is_made_again_when_redis_is_back(tmp_path, redis_server):
    down = queue_settings(tmp_path, None, redis_url=f"redis://127.0.0.1:{free_port()}/0",
                          job_retry_backoff_s=0.2, job_reaper_s=0.1)
    url = down.resolved_database_url
    migrate.upgrade(url)
    job_id = queued_analysis(url)

    queue = RQQueue(down)
    queue.enqueue("analysis", job_id)  # Redis refuses: logged, not raised
    with session_scope(url) as s:
        rec = store.get_analysis(s, analysis_id=job_id)
        assert rec.status == "queued" and rec.retry_at is not None  # marked to be offered again

    # Redis is back (same queue name); the next reaper sweep after the delay offers the job.
    queue.settings = down.model_copy(update={"redis_url": redis_server.url})
    queue._queue = None
    time.sleep(0.3)
    assert ("analysis", job_id) in queue.reaper.run_once()
    jobs = queue.rq_queue().get_jobs()
    assert [list(j.args) for j in jobs] == [["analysis", job_id]]
    assert queue.reaper.run_once() == []  # offered once, not on every sweep
