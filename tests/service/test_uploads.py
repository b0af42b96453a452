"""Bad uploads get a clear 4xx naming the field, and leave nothing behind (no row, no blob)."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import torch
from safetensors.torch import save as save_tensors

from tests.utils.service_factories import make_client, upload_dataset, upload_model


@pytest.fixture
def client(tmp_path):
    with make_client(tmp_path) as c:
        c.data_dir = tmp_path / "data"
        yield c


def assert_nothing_stored(client):
    blobs = client.data_dir / "blobs"
    stored = [p for p in blobs.rglob("*") if p.is_file()] if blobs.exists() else []
    assert stored == [], stored
    from service.storage.db.session import session_scope
    from sqlalchemy import text

    with session_scope(client.app.state.settings.resolved_database_url) as s:
        for table in ("models", "datasets", "analyses", "plans"):
            assert s.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 0


def post_model(client, payload: bytes, spec=None, filename="m.safetensors"):
    data = {"spec": spec if isinstance(spec, str) else json.dumps(spec)} if spec is not None else {}
    return client.post("/v1/models", files={"file": (filename, io.BytesIO(payload))}, data=data)


def test_truncated_safetensors(client, digits):
    payload = digits.weights_path.read_bytes()
    spec = {"architecture": "mlp", "hyperparams": digits.hyperparams}
    r = post_model(client, payload[: len(payload) // 2], spec)
    assert r.status_code == 422
    assert r.json()["field"] == "file" and "truncated" in r.json()["detail"]
    assert_nothing_stored(client)


@pytest.mark.parametrize(
    "payload, needle",
    [(b"", "empty"), (b"\x89PNG\r\n\x1a\n" + b"0" * 100, "unrecognised"), (b"hello world, not a model", "unrecognised")],
)
def test_wrong_type(client, payload, needle):
    r = post_model(client, payload, {"architecture": "mlp", "hyperparams": {}})
    assert r.status_code == 422 and r.json()["field"] == "file"
    assert needle in r.json()["detail"]
    assert_nothing_stored(client)


def test_header_lies_about_offsets(client):
    header = json.dumps({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}).encode()
    payload = len(header).to_bytes(8, "little") + header + b"\0" * 10
    r = post_model(client, payload, {"architecture": "mlp", "hyperparams": {}})
    assert r.status_code == 422 and "do not fit" in r.json()["detail"]
    assert_nothing_stored(client)


def test_spec_errors_name_the_field(client, digits):
    payload = digits.weights_path.read_bytes()
    r = post_model(client, payload, "{not json")
    assert r.status_code == 422 and r.json()["field"] == "spec"
    r = post_model(client, payload, None)
    assert r.status_code == 422 and r.json()["field"] == "spec"
    r = post_model(client, payload, {"architecture": "transformer9000", "hyperparams": {}})
    assert r.status_code == 422 and r.json()["field"].startswith("spec") and "mlp" in r.json()["detail"]
    bad = dict(digits.hyperparams, hidden="many")
    r = post_model(client, payload, {"architecture": "mlp", "hyperparams": bad})
    assert r.status_code == 422 and r.json()["field"] == "spec.hyperparams" and "hidden" in r.json()["detail"]
    assert_nothing_stored(client)


def test_weights_that_do_not_fit_the_spec(client, digits):
    payload = digits.weights_path.read_bytes()
    other = dict(digits.hyperparams, hidden=[32])
    r = post_model(client, payload, {"architecture": "mlp", "hyperparams": other})
    assert r.status_code == 422 and r.json()["field"] == "file"
    assert_nothing_stored(client)


def test_corrupt_pt2(client):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", b"x" * 1000)
    payload = buf.getvalue()
    r = post_model(client, payload[:-30], None, filename="m.pt2")
    assert r.status_code == 422 and r.json()["field"] == "file"
    r = post_model(client, payload, None, filename="m.pt2")  # a zip, but no exported program inside
    assert r.status_code == 422 and r.json()["field"] == "file"
    assert_nothing_stored(client)


def test_real_pt2_upload(client, tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    path = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(2, 8),)), str(path))
    r = post_model(client, path.read_bytes(), None, filename="tiny.pt2")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["format"] == "pt2"
    assert [(l["kind"], l["weight_shape"]) for l in body["layers"]] == [("linear", [16, 8]), ("linear", [3, 16])]


def test_pt2_switched_off(tmp_path):
    from fastapi.testclient import TestClient

    from service.api.app import create_app
    from service.config import Settings

    settings = Settings(data_dir=tmp_path / "d", allow_code_formats=False, _env_file=None)
    with TestClient(create_app(settings)) as c:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("a", b"b")
        r = c.post("/v1/models", files={"file": ("m.pt2", buf.getvalue())})
        assert r.status_code == 422 and "switched off" in r.json()["detail"]


def _dataset_bytes(**tensors) -> bytes:
    return save_tensors({k: v.contiguous() for k, v in tensors.items()})


@pytest.mark.parametrize(
    "tensors, needle",
    [
        ({"x": torch.zeros(4, 3)}, "inputs"),
        ({"inputs": torch.zeros(4, 3), "targets": torch.zeros(5, dtype=torch.int64)}, "targets"),
        ({"inputs": torch.zeros(4)}, "inputs"),
        ({"inputs": torch.zeros(4, 3), "labels": torch.zeros(4)}, "unexpected"),
    ],
)
def test_bad_datasets(client, tensors, needle):
    r = client.post("/v1/datasets", files={"file": ("d.safetensors", _dataset_bytes(**tensors))})
    assert r.status_code == 422 and r.json()["field"] == "file" and needle in r.json()["detail"]
    assert_nothing_stored(client)


def test_analysis_and_plan_requests_are_checked(client, digits):
    model = upload_model(client, digits).json()
    dataset = upload_dataset(client, digits.calibration_path).json()
    base = {"model_id": model["id"], "dataset_id": dataset["id"]}
    cases = [
        ({**base, "candidates": ["int4", "int17"]}, "candidates"),
        ({**base, "candidates": []}, "candidates"),
        ({**base, "metric": "vibes"}, "metric"),
        ({"model_id": model["id"]}, "dataset_id"),
        ({**base, "seed": -1}, "seed"),
        ({**base, "colour": "blue"}, "colour"),
        ({**base, "dataset_id": "missing"}, "dataset_id"),
    ]
    for body, field in cases:
        r = client.post("/v1/analyses", json=body)
        assert 400 <= r.status_code < 500, (body, r.text)
        assert r.json()["field"] == field, (body, r.json())
        assert field in r.json()["detail"]
    analysis = client.post("/v1/analyses", json=base).json()
    # average_bits is the alias of avg_bits: its errors name the budget word, avg_bits.
    for budget, field in [({}, "budget"), ({"average_bits": -2}, "budget.avg_bits"), ({"avg_bits": -2}, "budget.avg_bits"),
                          ({"average_bits": 4, "bytes": 10}, "budget"), ({"avg_bits": 4, "average_bits": 4}, "budget")]:
        r = client.post(f"/v1/analyses/{analysis['id']}/plans", json={"budget": budget})
        assert r.status_code == 422 and r.json()["field"] == field, r.json()
