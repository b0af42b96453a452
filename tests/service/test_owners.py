"""Owners: with two submit+read tokens over real HTTP, neither sees, builds on, cancels or follows the
other's models, datasets, analyses, plans, frontiers, evaluations, exports and export jobs (404, as
if absent); lists hold only one's own; admins see everything. On SQLite and on PostgreSQL. And a token's open
event stream ends once the token is revoked."""

from __future__ import annotations

import json

import httpx
import pytest

from service.storage import tokens
from service.config import Settings
from service.storage.db.models import AnalysisRecord
from service.storage.db.session import session_scope
from tests.utils.live_server import live_server
from tests.utils.service_factories import bearer
from tests.utils.synthetic import finish_analysis, problem_dict, stored_analysis


@pytest.fixture(params=["sqlite", "postgres"])
def server(request, tmp_path):
    url = None if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    settings = Settings(data_dir=tmp_path / "data", database_url=url, auth="on", _env_file=None)
    with live_server(settings, run_jobs=False) as base:  # analyses stay queued until the test finishes them
        yield base, settings


def _client(base: str, settings: Settings, *scopes: str, name: str) -> httpx.Client:
    with session_scope(settings.resolved_database_url) as s:
        secret = tokens.create_token(s, name=name, scopes=list(scopes)).secret
    return httpx.Client(base_url=base, timeout=60, headers=bearer(secret))


def _upload(http: httpx.Client, digits) -> tuple[dict, dict]:
    import json

    with open(digits.weights_path, "rb") as f:
        spec = {"architecture": digits.architecture, "hyperparams": digits.hyperparams}
        model = http.post("/v1/models", files={"file": ("m.safetensors", f)}, data={"spec": json.dumps(spec)})
    with open(digits.calibration_path, "rb") as f:
        dataset = http.post("/v1/datasets", files={"file": ("d.safetensors", f)})
    assert model.status_code == 201 and dataset.status_code == 201, (model.text, dataset.text)
    return model.json(), dataset.json()


def _problem_for(model: dict) -> dict:
    units = []
    for i, layer in enumerate(model["layers"]):
        n = int(layer["parameters"])
        units.append({"name": layer["name"], "weights": n, "options": [
            {"candidate": f"int{b}", "damage": (i + 1) * 4.0 ** -b, "costs": {"bytes": n * b / 8 + n / 32}}
            for b in (4, 8)]})
    return {"version": 1, "units": units}


def _missing(r: httpx.Response) -> None:
    assert r.status_code == 404, (r.request.method, r.request.url.path, r.status_code, r.text)


def test_two_tokens_never_see_or_touch_each_others_work(server, digits):
    base, settings = server
    url = settings.resolved_database_url
    a = _client(base, settings, "read", "submit", name="alice")
    b = _client(base, settings, "read", "submit", name="bob")
    admin = _client(base, settings, "admin", name="ops")
    with a, b, admin:
        model_a, data_a = _upload(a, digits)
        model_b, data_b = _upload(b, digits)

        # Models and datasets: invisible to the other, and not to be built on.
        _missing(b.get(f"/v1/models/{model_a['id']}"))
        _missing(b.get(f"/v1/datasets/{data_a['id']}"))
        r = b.post("/v1/analyses", json={"model_id": model_a["id"], "dataset_id": data_b["id"]})
        _missing(r)
        assert r.json()["field"] == "model_id"
        r = b.post("/v1/analyses", json={"model_id": model_b["id"], "dataset_id": data_a["id"]})
        _missing(r)
        assert r.json()["field"] == "dataset_id"

        analysis_a = a.post("/v1/analyses", json={"model_id": model_a["id"], "dataset_id": data_a["id"]}).json()
        analysis_b = b.post("/v1/analyses", json={"model_id": model_b["id"], "dataset_id": data_b["id"]}).json()
        aid = analysis_a["id"]
        _missing(b.get(f"/v1/analyses/{aid}"))
        _missing(b.get(f"/v1/analyses/{aid}/events"))
        _missing(b.post(f"/v1/analyses/{aid}/cancel"))
        assert [x["id"] for x in a.get("/v1/analyses").json()] == [aid]
        assert [x["id"] for x in b.get("/v1/analyses").json()] == [analysis_b["id"]]
        assert {x["id"] for x in admin.get("/v1/analyses").json()} == {aid, analysis_b["id"]}

        finish_analysis(url, aid, _problem_for(model_a))
        plan = a.post(f"/v1/analyses/{aid}/plans", json={"budget": {"average_bits": 6}})
        assert plan.status_code == 201, plan.text
        pid = plan.json()["id"]
        assert a.get(f"/v1/analyses/{aid}/frontier", params={"points": 3}).status_code == 200

        # Analyses, plans, frontiers, exports: the other token gets 404 on every read and every build.
        for path in (f"/v1/analyses/{aid}/table", f"/v1/analyses/{aid}/plans", f"/v1/analyses/{aid}/frontier",
                     f"/v1/analyses/{aid}/evaluations", f"/v1/analyses/{aid}/proxy-quality",
                     f"/v1/plans/{pid}", f"/v1/plans/{pid}/export"):
            _missing(b.get(path))
        _missing(b.post(f"/v1/analyses/{aid}/plans", json={"budget": {"average_bits": 6}}))
        _missing(b.post(f"/v1/plans/{pid}/evaluations", json={"dataset_id": data_b["id"]}))
        _missing(b.post(f"/v1/analyses/{aid}/frontier/evaluations", json={"dataset_id": data_b["id"], "points": 3}))
        r = a.post(f"/v1/plans/{pid}/evaluations", json={"dataset_id": data_b["id"]})  # the other's data
        _missing(r)
        assert r.json()["field"] == "dataset_id"

        evaluation = a.post(f"/v1/plans/{pid}/evaluations", json={"dataset_id": data_a["id"]})
        assert evaluation.status_code == 202, evaluation.text
        eid = evaluation.json()["id"]
        frontier_eval = a.post(f"/v1/analyses/{aid}/frontier/evaluations",
                               json={"dataset_id": data_a["id"], "points": 3, "k": 2})
        assert frontier_eval.status_code == 202, frontier_eval.text
        _missing(b.get(f"/v1/evaluations/{eid}"))
        _missing(b.get(f"/v1/evaluations/{eid}/events"))
        _missing(b.post(f"/v1/evaluations/{eid}/cancel"))
        # Export jobs: the other token cannot start one on the plan, nor see, follow, cancel or fetch one.
        _missing(b.post(f"/v1/plans/{pid}/exports", json={"format": "safetensors"}))
        export = a.post(f"/v1/plans/{pid}/exports", json={"format": "safetensors"})
        assert export.status_code == 202, export.text
        xid = export.json()["id"]
        for path in (f"/v1/exports/{xid}", f"/v1/exports/{xid}/events", f"/v1/exports/{xid}/file"):
            _missing(b.get(path))
        _missing(b.post(f"/v1/exports/{xid}/cancel"))
        assert admin.get(f"/v1/exports/{xid}").status_code == 200
        assert a.post(f"/v1/exports/{xid}/cancel").json()["status"] == "cancelled"

        # The owner keeps full use of all of it; an admin sees it too.
        assert [p["id"] for p in a.get(f"/v1/analyses/{aid}/plans").json()] == [pid]
        assert {e["id"] for e in a.get(f"/v1/analyses/{aid}/evaluations").json()} == {eid, frontier_eval.json()["id"]}
        assert a.get(f"/v1/plans/{pid}/export").status_code == 200
        for path in (f"/v1/models/{model_a['id']}", f"/v1/datasets/{data_a['id']}", f"/v1/plans/{pid}",
                     f"/v1/evaluations/{eid}", f"/v1/analyses/{aid}/table"):
            assert a.get(path).status_code == 200, path
            assert admin.get(path).status_code == 200, path
        assert a.post(f"/v1/evaluations/{eid}/cancel").json()["status"] == "cancelled"
        assert b.post(f"/v1/analyses/{analysis_b['id']}/cancel").json()["status"] == "cancelled"


def test_an_open_event_stream_ends_when_its_token_is_revoked(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", auth="on", sse_keepalive_s=0.2, job_poll_s=0.2, _env_file=None)
    with live_server(settings, run_jobs=False) as base:
        with session_scope(settings.resolved_database_url) as s:
            issued = tokens.create_token(s, name="watcher", scopes=["read"])
            token_id, secret = issued.record.id, issued.secret
            admin = tokens.create_token(s, name="ops", scopes=["admin"]).secret
        analysis_id = stored_analysis(settings.resolved_database_url, problem_dict(2))
        with session_scope(settings.resolved_database_url) as s:  # a queued job of the watcher's: no end in sight
            rec = s.get(AnalysisRecord, analysis_id)
            rec.status, rec.owned_by = "queued", token_id
        with httpx.Client(base_url=base, timeout=30) as http:
            with http.stream("GET", f"/v1/analyses/{analysis_id}/events", headers=bearer(secret)) as stream:
                lines = stream.iter_lines()
                assert next(line for line in lines if line.startswith("event:")) == "event: analysis"
                revoked = http.delete(f"/v1/tokens/{token_id}", headers=bearer(admin))
                assert revoked.status_code == 200, revoked.text
                after = []
                for line in lines:  # a stream that goes on would only send keep-alives from here
                    after.append(line)
                    assert len(after) < 200, "the stream kept going after its token was revoked"
            assert "event: error" in after
            error = json.loads(after[after.index("event: error") + 1].removeprefix("data: "))
            assert error["field"] == "authorization" and "revoked" in error["detail"]
            assert http.get(f"/v1/analyses/{analysis_id}/events", headers=bearer(secret)).status_code == 401
