"""Limits: early size refusal, zip-archive checks, per-token request rate and concurrent jobs (429 + Retry-After)."""

from __future__ import annotations

import io
import zipfile

from service.api.limits import TokenBucket
from service.errors import InvalidInput
from service.core.uploads import check_zip
from tests.utils.service_factories import bearer, issue_token, make_client, upload_dataset, upload_model

import pytest


def test_token_bucket_refills_at_its_rate():
    bucket = TokenBucket(rate=2.0, burst=3)
    assert [bucket.take("t", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take("t", now=0.0) == pytest.approx(0.5)
    assert bucket.take("other", now=0.0) == 0.0  # buckets are per token
    assert bucket.take("t", now=0.6) == 0.0


def test_rate_limit_answers_429_with_retry_after_per_token(tmp_path):
    with make_client(tmp_path, auth="on", run_jobs=False, rate_limit_per_s=0.5, rate_limit_burst=3) as c:
        a, b = issue_token(c, "read"), issue_token(c, "read")
        codes = [c.get("/v1/analyses", headers=bearer(a)).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = c.get("/v1/analyses", headers=bearer(a))
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and r.json()["field"] == "authorization"
        assert c.get("/v1/analyses", headers=bearer(b)).status_code == 200


def test_concurrent_jobs_per_token_are_limited(tmp_path, digits):
    with make_client(tmp_path, auth="on", run_jobs=False, max_active_jobs_per_token=2) as c:
        one, two = issue_token(c, "read", "submit"), issue_token(c, "read", "submit")
        c.headers.update(bearer(one))
        model = upload_model(c, digits).json()
        dataset = upload_dataset(c, digits.calibration_path).json()
        body = {"model_id": model["id"], "dataset_id": dataset["id"]}
        assert [c.post("/v1/analyses", json=body).status_code for _ in range(2)] == [202, 202]
        r = c.post("/v1/analyses", json=body)
        assert r.status_code == 429 and r.headers["retry-after"] == "10"
        assert r.json()["field"] == "token" and "limit 2" in r.json()["detail"]
        c.headers.update(bearer(two))  # another token, with its own model and data (one's are not its to use)
        body = {"model_id": upload_model(c, digits).json()["id"],
                "dataset_id": upload_dataset(c, digits.calibration_path).json()["id"]}
        assert c.post("/v1/analyses", json=body).status_code == 202


def test_declared_oversize_bodies_are_refused_before_reading(tmp_path, digits):
    with make_client(tmp_path, run_jobs=False, max_upload_bytes=1000) as c:
        big = b"\0" * (1100 + (1 << 20))
        r = c.post("/v1/datasets", files={"file": ("d.safetensors", big)})
        assert r.status_code == 413 and r.json()["field"] == "file"
        r = c.post("/v1/analyses", content=b"{" + b" " * (1 << 20) + b"}", headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["field"] == "body"
        r = upload_dataset(c, digits.calibration_path)  # 34 kB: within the slack, caught while streaming
        assert r.status_code == 413 and r.json()["field"] == "file"


def _zip(tmp_path, members: list[tuple[str, bytes]], name="a.pt2"):
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for member, data in members:
            zf.writestr(member, data)
    return path


def test_zip_checks(tmp_path):
    check_zip(_zip(tmp_path, [("m/data.pkl", b"hello" * 10)]))
    with pytest.raises(InvalidInput, match="200"):
        check_zip(_zip(tmp_path, [("m/zeros", b"\0" * 10_000_000)]))
    with pytest.raises(InvalidInput, match="unpacks to"):
        check_zip(_zip(tmp_path, [("m/a", bytes(range(256)) * 100)]), max_total_bytes=1000)
    with pytest.raises(InvalidInput, match="escapes"):
        check_zip(_zip(tmp_path, [("../evil", b"x" * 100)]))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InvalidInput, match="same name"):
            check_zip(_zip(tmp_path, [("m/a", b"x" * 100), ("m/a", b"y" * 100)]))
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(InvalidInput) as info:
        check_zip(bad)
    assert info.value.field == "file"
