"""options.latency_table as a JSON object over HTTP and from the CLI; options.hardware with a data-free metric."""

from __future__ import annotations

import json

import pytest

from service.cli.commands import _latency_table_file, _options
from tests.service.test_api_flow import wait_for
from tests.utils.service_factories import make_client, upload_dataset, upload_model

MS = [{"int4": 0.10, "int8": 0.30}, {"int4": 0.05, "int8": 0.20}, {"int4": 0.01, "int8": 0.02}]


@pytest.fixture
def client(tmp_path):
    with make_client(tmp_path) as c:
        yield c


def test_latency_table_object_gives_costs_and_a_latency_plan(client, digits, tmp_path):
    model = upload_model(client, digits, name="digits").json()
    first, second, _ = names = [layer["name"] for layer in model["layers"]]
    TABLE = dict(zip(names, MS, strict=True))
    dataset = upload_dataset(client, digits.calibration_path).json()
    body = {"model_id": model["id"], "dataset_id": dataset["id"], "candidates": ["int4", "int8"], "metric": "mse"}

    r = client.post("/v1/analyses", json={**body, "options": {"latency_table": json.dumps(TABLE)}})
    assert r.status_code == 422 and "options.latency_table: send a JSON object, not a string" in r.text
    r = client.post("/v1/analyses", json={**body, "options": {"latency_table": {**TABLE, second: {"int4": -1}}}})
    assert r.status_code == 422 and f"options.latency_table.{second}.int4" in r.text
    r = client.post("/v1/analyses", json={**body, "options": {"latency_table": {**TABLE, second: 3}}})
    assert r.status_code == 422 and f"options.latency_table.{second}" in r.text

    # layers and candidates are checked at submit against the model's recorded layers: nothing queued
    r = client.post("/v1/analyses", json={**body, "options": {"latency_table": {**TABLE, "fc9": {"int4": 1}}}})
    assert r.status_code == 422
    assert r.json()["detail"] == f"options.latency_table: unknown layer 'fc9'; the model's layers: {', '.join(names)}"
    r = client.post("/v1/analyses", json={**body, "options": {"latency_table": {**TABLE, first: {"int4": 0.1}}}})
    assert r.status_code == 422
    assert r.json()["detail"] == (f"options.latency_table: layer {first!r} candidate 'int8': needs a finite number "
                                  "of ms ≥ 0, got None")
    assert client.get("/v1/analyses").json() == []

    r = client.post("/v1/analyses", json={**body, "options": {"latency_table": TABLE}})
    assert r.status_code == 202, r.text
    final = wait_for(client, r.json()["id"])
    assert final["status"] == "succeeded", final["error"]
    table = client.get(f"/v1/analyses/{final['id']}/table").json()
    got = {row["layer"]: {c["candidate"]: c["details"]["latency_ms"] for c in row["candidates"]} for row in table["layers"]}
    assert got == TABLE
    r = client.post(f"/v1/analyses/{final['id']}/plans", json={"budget": {"latency_ms": 0.2}})
    assert r.status_code == 201, r.text
    plan = r.json()
    assert plan["costs"]["latency_ms"] <= 0.2 + 1e-9
    assert {c["layer"]: c["candidate"] for c in plan["layers"]}[first] == "int4"  # int8 there alone costs 0.3 ms

    # the CLI's --options FILE carries the same object
    path = tmp_path / "options.json"
    path.write_text(json.dumps({"latency_table": TABLE}))
    assert _options(str(path)) == {"latency_table": TABLE}
    path.write_text(json.dumps(TABLE))
    assert _latency_table_file(str(path)) == TABLE
    path.write_text("[1]")
    with pytest.raises(ValueError, match="--latency-table: expected a JSON object"):
        _latency_table_file(str(path))


def test_mse_with_hardware_has_latency_and_bops(client, digits):
    model = upload_model(client, digits, name="digits").json()
    r = client.post("/v1/analyses", json={"model_id": model["id"], "metric": "mse", "candidates": ["int4", "int8"],
                                          "options": {"hardware": "a100"}})
    assert r.status_code == 202, r.text
    final = wait_for(client, r.json()["id"])
    assert final["status"] == "succeeded", final["error"]
    table = client.get(f"/v1/analyses/{final['id']}/table").json()
    first = table["layers"][0]
    assert first["weights"] == 64 * 128  # one sample: MACs = weights for a Linear
    assert [c["details"]["bops"] for c in first["candidates"]] == [64 * 128 * 4 * 16, 64 * 128 * 8 * 16]
    assert all(c["details"]["latency_ms"] > 0 for row in table["layers"] for c in row["candidates"])
    assert table["provenance"]["cost_sample"] == "synthetic"
    assert "cost_unavailable" not in [w["code"] for w in table.get("warnings", [])]
