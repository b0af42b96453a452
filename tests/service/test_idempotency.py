"""Idempotency-Key on POST: replay, mismatch, in flight, expiry, per-caller keys; JSON and multipart."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from service.api.idempotency import _begin
from service.storage.db.models import DatasetRecord, IdempotencyRecord, utcnow
from service.storage.db.session import session_scope
from tests.utils.service_factories import bearer, issue_token, make_client


@pytest.fixture(params=["sqlite", "postgres"])
def client(request, tmp_path):
    url = None if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    with make_client(tmp_path, url, auth="on", run_jobs=False) as c:
        c.headers.update(bearer(issue_token(c, "admin")))
        yield c


def _url(client) -> str:
    return client.app.state.settings.resolved_database_url


def test_same_key_same_body_replays_the_first_response(client):
    body = {"name": "ci", "scopes": ["read"]}
    first = client.post("/v1/tokens", json=body, headers={"Idempotency-Key": "k-1"})
    again = client.post("/v1/tokens", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()  # the same token, secret included: created once
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    names = [t["name"] for t in client.get("/v1/tokens").json()]
    assert names.count("ci") == 1
    # without a key every POST is a new request
    client.post("/v1/tokens", json=body)
    assert [t["name"] for t in client.get("/v1/tokens").json()].count("ci") == 2


def test_same_key_other_body_is_422_naming_the_header(client):
    client.post("/v1/tokens", json={"name": "a", "scopes": ["read"]}, headers={"Idempotency-Key": "k-2"})
    r = client.post("/v1/tokens", json={"name": "b", "scopes": ["read"]}, headers={"Idempotency-Key": "k-2"})
    assert r.status_code == 422
    assert r.json()["field"] == "Idempotency-Key" and r.json()["detail"].startswith("Idempotency-Key:")
    r = client.post("/v1/analyses", json={"name": "a", "scopes": ["read"]}, headers={"Idempotency-Key": "k-2"})
    assert r.status_code == 422 and r.json()["field"] == "Idempotency-Key"  # another path is another request


def test_multipart_upload_is_replayed(client, digits):
    def post():
        with open(digits.calibration_path, "rb") as f:
            return client.post("/v1/datasets", files={"file": ("d.safetensors", f)},
                               headers={"Idempotency-Key": "upload-1"})

    first, again = post(), post()
    assert first.status_code == again.status_code == 201, first.text
    assert first.json()["id"] == again.json()["id"]
    with session_scope(_url(client)) as s:
        assert len(s.scalars(select(DatasetRecord)).all()) == 1


def test_error_outcomes_are_replayed_but_transient_ones_are_not(client):
    r1 = client.post("/v1/analyses", json={"model_id": "missing"}, headers={"Idempotency-Key": "k-404"})
    r2 = client.post("/v1/analyses", json={"model_id": "missing"}, headers={"Idempotency-Key": "k-404"})
    assert r1.status_code == r2.status_code == 404 and r2.headers["idempotent-replayed"] == "true"
    # a 403 is about the caller, not the request: not stored, so the key stays usable
    reader = issue_token(client, "read")
    r = client.post("/v1/tokens", json={"name": "x", "scopes": ["read"]},
                    headers={**bearer(reader), "Idempotency-Key": "k-403"})
    assert r.status_code == 403
    with session_scope(_url(client)) as s:
        assert s.scalar(select(IdempotencyRecord).where(IdempotencyRecord.key == "k-403")) is None


def test_in_flight_duplicate_is_409(client):
    body = b'{"name": "x", "scopes": ["read"]}'
    owner = client.get("/v1/tokens").json()[0]["id"]
    import hashlib

    digest = hashlib.sha256()
    for part in ("POST", "/v1/tokens", "", owner):
        digest.update(part.encode() + b"\0")
    digest.update(body)
    outcome, _ = _begin(_url(client), owner=owner, key="busy", request_hash=digest.hexdigest(), ttl_s=3600)
    assert outcome == "new"
    r = client.post("/v1/tokens", content=body, headers={"Idempotency-Key": "busy", "content-type": "application/json"})
    assert r.status_code == 409 and r.json()["field"] == "Idempotency-Key" and r.headers["retry-after"]


def test_keys_are_per_token_and_expire(client):
    other = issue_token(client, "admin", name="other")
    a = client.post("/v1/tokens", json={"name": "a", "scopes": ["read"]}, headers={"Idempotency-Key": "shared"})
    b = client.post("/v1/tokens", json={"name": "b", "scopes": ["read"]},
                    headers={**bearer(other), "Idempotency-Key": "shared"})
    assert a.status_code == b.status_code == 201 and a.json()["id"] != b.json()["id"]
    with session_scope(_url(client)) as s:
        s.execute(update(IdempotencyRecord).values(expires_at=utcnow() - timedelta(seconds=1)))
    again = client.post("/v1/tokens", json={"name": "a", "scopes": ["read"]}, headers={"Idempotency-Key": "shared"})
    assert again.status_code == 201 and again.json()["id"] != a.json()["id"]  # expired: a new request


def test_bad_keys_are_refused(client):
    r = client.post("/v1/tokens", json={"name": "a", "scopes": ["read"]}, headers={"Idempotency-Key": "x" * 201})
    assert r.status_code == 422 and r.json()["field"] == "Idempotency-Key"


def test_without_auth_keys_belong_to_the_anonymous_caller(tmp_path):
    with make_client(tmp_path, run_jobs=False) as c:
        r1 = c.post("/v1/analyses", json={"model_id": "m"}, headers={"Idempotency-Key": "anon"})
        r2 = c.post("/v1/analyses", json={"model_id": "m"}, headers={"Idempotency-Key": "anon"})
        assert r1.status_code == r2.status_code == 404 and r2.headers["idempotent-replayed"] == "true"
