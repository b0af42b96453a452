"""Bearer tokens with scopes: who may read, submit and administer; on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest

from service.storage import tokens
from service.api.security import auth_required, is_loopback
from service.cli import main
from service.config import Settings, get_settings
from service.storage.db.models import ApiTokenRecord
from service.storage.db.session import session_scope
from tests.utils.service_factories import bearer, issue_token, make_client


@pytest.fixture(params=["sqlite", "postgres"])
def client(request, tmp_path):
    url = None if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    with make_client(tmp_path, url, auth="on", run_jobs=False) as c:
        yield c


def test_no_token_is_401_with_a_challenge_but_ops_stay_public(client):
    r = client.get("/v1/analyses")
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["field"] == "authorization"
    assert client.post("/v1/analyses", json={"model_id": "x"}).status_code == 401
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert client.get(path).status_code == 200, path


@pytest.mark.parametrize("header", ["Bearer nope", "Bearer bp_00000000_wrong", "Basic dXNlcjpwdw==", "Bearer "])
def test_bad_tokens_are_401(client, header):
    r = client.get("/v1/analyses", headers={"Authorization": header})
    assert r.status_code == 401
    assert "www-authenticate" in r.headers


def test_a_right_prefix_with_a_wrong_secret_is_refused(client):
    secret = issue_token(client, "read")
    forged = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    assert client.get("/v1/analyses", headers=bearer(forged)).status_code == 401
    assert client.get("/v1/analyses", headers=bearer(secret)).status_code == 200


def test_scopes_per_method_and_403_names_the_scope(client):
    read, submit = issue_token(client, "read"), issue_token(client, "submit")
    assert client.get("/v1/analyses", headers=bearer(read)).status_code == 200
    r = client.post("/v1/analyses", headers=bearer(read), json={"model_id": "x"})
    assert r.status_code == 403
    assert r.json()["scope"] == "submit" and "'submit'" in r.json()["detail"]
    assert 'scope="submit"' in r.headers["www-authenticate"]
    # submit passes auth and reaches the route (404: no such model)
    assert client.post("/v1/analyses", headers=bearer(submit), json={"model_id": "x"}).status_code == 404
    r = client.get("/v1/analyses", headers=bearer(submit))
    assert r.status_code == 403 and r.json()["scope"] == "read"


def test_token_admin_needs_admin_and_revocation_takes_effect(client):
    admin, reader = issue_token(client, "admin"), issue_token(client, "read", "submit")
    r = client.post("/v1/tokens", headers=bearer(reader), json={"name": "x", "scopes": ["read"]})
    assert r.status_code == 403 and r.json()["scope"] == "admin"
    r = client.post("/v1/tokens", headers=bearer(admin), json={"name": "ci", "scopes": ["read"]})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["secret"].startswith(f"bp_{created['prefix']}_")
    assert client.get("/v1/analyses", headers=bearer(created["secret"])).status_code == 200  # admin implies read
    listed = client.get("/v1/tokens", headers=bearer(admin)).json()
    assert created["id"] in {t["id"] for t in listed} and all("secret" not in t for t in listed)
    assert client.delete(f"/v1/tokens/{created['id']}", headers=bearer(admin)).json()["revoked_at"]
    assert client.get("/v1/analyses", headers=bearer(created["secret"])).status_code == 401
    r = client.delete("/v1/tokens/nope", headers=bearer(admin))
    assert r.status_code == 404 and r.json()["field"] == "token_id"
    r = client.post("/v1/tokens", headers=bearer(admin), json={"name": "x", "scopes": ["root"]})
    assert r.status_code == 422 and r.json()["field"].startswith("scopes")


def test_only_the_hash_is_stored(client):
    secret = issue_token(client, "read")
    with session_scope(client.app.state.settings.resolved_database_url) as s:
        rows = s.query(ApiTokenRecord).all()
        assert rows and all(secret not in (r.secret_hash, r.prefix) for r in rows)
        assert tokens.verify_token(s, secret=secret) is not None
        assert tokens.verify_token(s, secret=secret + "x") is None


def test_analyses_record_the_token_that_submitted_them(tmp_path, digits):
    from tests.utils.service_factories import upload_dataset, upload_model

    with make_client(tmp_path, auth="on", run_jobs=False) as c:
        secret = issue_token(c, "read", "submit")
        c.headers.update(bearer(secret))
        model = upload_model(c, digits).json()
        dataset = upload_dataset(c, digits.calibration_path).json()
        r = c.post("/v1/analyses", json={"model_id": model["id"], "dataset_id": dataset["id"]})
        assert r.status_code == 202, r.text
        from service.storage.db.models import AnalysisRecord

        with session_scope(c.app.state.settings.resolved_database_url) as s:
            rec = s.get(AnalysisRecord, r.json()["id"])
            assert rec.token_id == tokens.verify_token(s, secret=secret).id


@pytest.mark.parametrize(("mode", "host", "force", "expected"), [
    ("auto", "127.0.0.1", False, False), ("auto", "::1", False, False), ("auto", "localhost", False, False),
    ("auto", "0.0.0.0", False, True), ("auto", "api.example.com", False, True), ("on", "127.0.0.1", False, True),
    ("off", "127.0.0.1", False, False), ("off", "0.0.0.0", True, False),
])
def test_auth_is_on_whenever_reachable_beyond_localhost(mode, host, force, expected):
    assert auth_required(Settings(auth=mode, host=host, auth_force_off=force, _env_file=None)) is expected


def test_auth_off_on_a_public_address_refuses_to_start(tmp_path):
    from service.api.app import create_app

    with pytest.raises(ValueError, match="auth"):
        create_app(Settings(data_dir=tmp_path, auth="off", host="0.0.0.0", _env_file=None))
    assert is_loopback("127.0.0.5") and not is_loopback("10.0.0.1")


def test_token_cli_create_list_revoke(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BITPLAN_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        assert main(["token", "create", "--name", "ci", "--scopes", "read,submit"]) == 0
        secret = capsys.readouterr().out.strip()
        assert secret.startswith("bp_")
        assert main(["token", "list"]) == 0
        listing = capsys.readouterr().out
        assert "ci" in listing and "read,submit" in listing and secret not in listing
        token_id = listing.split()[0]
        assert main(["token", "create", "--name", "x", "--scopes", "root"]) == 2
        assert main(["token", "revoke", token_id]) == 0
        capsys.readouterr()
        assert main(["token", "list"]) == 0 and capsys.readouterr().out == ""
    finally:
        get_settings.cache_clear()
