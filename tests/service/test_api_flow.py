"""The whole HTTP flow, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import time

import pytest

from tests.utils.service_factories import make_client, upload_dataset, upload_model


@pytest.fixture(params=["sqlite", "postgres"])
def client(request, tmp_path):
    url = None if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    with make_client(tmp_path, url) as c:
        yield c


def wait_for(client, analysis_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.get(f"/v1/analyses/{analysis_id}").json()
        if state["status"] in ("succeeded", "failed", "cancelled"):
            return state
        time.sleep(0.2)
    raise AssertionError(f"analysis {analysis_id} did not finish in {timeout} s")


def test_model_to_plan(client, digits):
    r = upload_model(client, digits, name="digits")
    assert r.status_code == 201, r.text
    model = r.json()
    assert [l["name"] for l in model["layers"]] == ["fc1", "fc2", "fc3"]
    assert model["parameters"] == 64 * 128 + 128 * 64 + 64 * 10
    assert len(model["sha256"]) == 64
    assert client.get(f"/v1/models/{model['id']}").json()["sha256"] == model["sha256"]

    r = upload_dataset(client, digits.calibration_path)
    assert r.status_code == 201, r.text
    dataset = r.json()
    assert dataset["samples"] == 128 and dataset["input_shape"] == [64] and dataset["has_targets"]

    r = client.post("/v1/analyses", json={"model_id": model["id"], "dataset_id": dataset["id"]})
    assert r.status_code == 202, r.text
    analysis = r.json()
    assert analysis["candidates"] == ["int2", "int3", "int4", "int6", "int8"]
    assert client.post(f"/v1/analyses/{analysis['id']}/plans", json={"budget": {"average_bits": 4}}).status_code in (
        409, 201)  # 409 while still running; the job may already be done on a fast machine

    final = wait_for(client, analysis["id"])
    assert final["status"] == "succeeded", final["error"]
    assert final["progress"]["fraction"] == 1.0

    table = client.get(f"/v1/analyses/{analysis['id']}/table").json()
    assert len(table["layers"]) == 3
    for row in table["layers"]:
        assert row["statistics"]["mean"] > 0  # cross-entropy at a trained minimum: positive curvature
        assert [c["candidate"] for c in row["candidates"]] == analysis["candidates"]
        damages = [c["damage"] for c in row["candidates"]]
        assert damages == sorted(damages, reverse=True)  # more bits, less damage

    r = client.post(f"/v1/analyses/{analysis['id']}/plans", json={"budget": {"average_bits": 4}})
    assert r.status_code == 201, r.text
    plan = r.json()
    budget_bytes = 4 * model["parameters"] / 8
    assert plan["total_bytes"] <= budget_bytes + 1e-6
    assert plan["average_bits"] <= 4 + 1e-9
    assert {l["layer"] for l in plan["layers"]} == {l["name"] for l in model["layers"]}
    assert plan["solver"]["status"] == "optimal"
    assert sum(l["bytes"] for l in plan["layers"]) == pytest.approx(plan["total_bytes"])
    assert client.get(f"/v1/plans/{plan['id']}").json() == plan

    # A more generous budget never predicts more damage.
    plan8 = client.post(f"/v1/analyses/{analysis['id']}/plans", json={"budget": {"bytes": model["parameters"]}}).json()
    assert plan8["predicted_damage"] <= plan["predicted_damage"]

    r = client.post(f"/v1/analyses/{analysis['id']}/plans", json={"budget": {"average_bits": 1}})
    assert r.status_code == 422
    body = r.json()
    assert body["field"] == "budget"
    smallest = body["minimums"]["bytes"]
    assert smallest > model["parameters"] / 8  # INT2 plus scales is more than one bit per weight
    assert f"({smallest:.6g} bytes)" in body["detail"]


def test_missing_things_are_404(client):
    assert client.get("/v1/analyses/nope").status_code == 404
    assert client.get("/v1/plans/nope").status_code == 404
    r = client.post("/v1/analyses", json={"model_id": "nope"})
    assert r.status_code == 404 and r.json()["field"] == "model_id"
