"""Operations: /healthz, /readyz with per-check details, Prometheus /metrics."""

from __future__ import annotations

from service.api.routes import ops
from service.storage.db import migrate
from tests.utils.service_factories import make_client


def test_readyz_reports_each_check(tmp_path):
    with make_client(tmp_path, run_jobs=False) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        r = c.get("/readyz")
        assert r.status_code == 200, r.text
        checks = r.json()["checks"]
        assert checks["database"]["status"] == "ok" and checks["migrations"]["status"] == "ok"
        assert checks["redis"]["status"] == "skipped"
        assert set(checks) == {"database", "migrations", "redis", "worker"}


def test_readyz_is_503_when_the_schema_is_behind(tmp_path):
    with make_client(tmp_path, run_jobs=False) as c:
        migrate.alembic_config  # noqa: B018 - the module is what we drive
        from alembic import command

        command.downgrade(migrate.alembic_config(c.app.state.settings.resolved_database_url), "0002")
        r = c.get("/readyz")
        assert r.status_code == 503
        assert r.json()["status"] == "not ready" and r.json()["checks"]["migrations"]["status"] == "fail"


def test_unreachable_redis_fails_its_check():
    result = ops._check(lambda: ops._redis("redis://127.0.0.1:1/0"))
    assert result["status"] == "fail" and result["detail"]


def test_metrics_count_requests_by_route_template_and_jobs_by_state(tmp_path):
    with make_client(tmp_path, run_jobs=False) as c:
        c.get("/v1/analyses/abc")
        c.get("/v1/analyses/def")
        c.get("/no/such/path")
        text = c.get("/metrics").text
    assert 'bitplan_http_requests_total{method="GET",route="/v1/analyses/{analysis_id}",status="404"} 2.0' in text
    assert 'route="unmatched"' in text and "/no/such/path" not in text
    assert 'bitplan_jobs{state="queued"} 0.0' in text
    assert "bitplan_queue_depth 0.0" in text
    assert 'bitplan_job_duration_seconds_count{state="succeeded"} 0.0' in text
    assert "bitplan_http_request_duration_seconds_bucket" in text and "bitplan_database_up 1.0" in text
