"""Jobs live in the database: an analysis interrupted by a server restart runs again afterwards."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from service.storage import store
from service.api.app import create_app
from service.config import Settings
from service.storage.db.session import session_scope
from tests.utils.service_factories import upload_dataset, upload_model


def test_unfinished_job_runs_after_restart(tmp_path, digits):
    settings = Settings(data_dir=tmp_path / "data", _env_file=None)
    with TestClient(create_app(settings, run_jobs=False)) as c:  # a server whose runner never got to it
        model = upload_model(c, digits).json()
        dataset = upload_dataset(c, digits.calibration_path).json()
        analysis = c.post("/v1/analyses", json={"model_id": model["id"], "dataset_id": dataset["id"]}).json()
    with session_scope(settings.resolved_database_url) as s:  # it had started when the server died
        assert store.claim_job(s, kind="analysis", job_id=analysis["id"])
    with TestClient(create_app(settings, run_jobs=False)) as c:
        first_start = c.get(f"/v1/analyses/{analysis['id']}").json()["started_at"]
    assert first_start is not None
    with TestClient(create_app(settings)) as c:
        deadline = time.monotonic() + 120
        while (state := c.get(f"/v1/analyses/{analysis['id']}").json())["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert state["status"] == "succeeded", state["error"]
        assert state["attempts"] == 2
        assert state["started_at"] == first_start  # when it first started, not when the retry did
