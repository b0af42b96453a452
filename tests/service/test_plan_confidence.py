"""Plans say how sure they are and carry the analysis's warnings, over HTTP (issue 10)."""

from __future__ import annotations

import time

import pytest

from tests.utils.service_factories import zipped
from tests.utils.service_factories import make_client, upload_dataset, upload_model
from workers.metrics import DEFAULT_METRIC


@pytest.fixture
def client(tmp_path):
    with make_client(tmp_path) as c:
        yield c


def finished(client, analysis_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while (state := client.get(f"/v1/analyses/{analysis_id}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert state["status"] == "succeeded", state["error"]
    return state


def test_cross_entropy_hessian_warnings_reach_the_analysis_and_its_plans(client, tmp_path):
    pytest.importorskip("transformers")
    from tests.utils.hf_factories import save_tiny, write_jsonl

    save_tiny("gpt2", tmp_path / "gpt2")
    model = client.post("/v1/models", files={"file": ("gpt2.zip", zipped(tmp_path / "gpt2"))}).json()
    text = write_jsonl(tmp_path / "calib.jsonl")
    dataset = client.post("/v1/datasets", files={"file": ("calib.jsonl", open(text, "rb"))}).json()
    r = client.post("/v1/analyses", json={"model_id": model["id"], "dataset_id": dataset["id"], "candidates": ["int4", "int8"],
                                          "metric": "hutchinson", "options": {"loss": "cross_entropy", "max_probes": 32}})
    assert r.status_code == 202, r.text
    analysis = finished(client, r.json()["id"])
    negative = {w["layer"] for w in analysis["warnings"] if w["code"] == "negative_trace"}
    assert negative  # a random GPT-2 is far from a minimum of next-token cross-entropy
    table = client.get(f"/v1/analyses/{analysis['id']}/table").json()
    assert {row["layer"] for row in table["layers"] if row["statistics"]["mean"] < 0} == negative
    assert table["warnings"] == analysis["warnings"]

    r = client.post(f"/v1/analyses/{analysis['id']}/plans", json={"budget": {"average_bits": 6}})
    assert r.status_code == 201, r.text
    plan = r.json()
    assert {w["layer"] for w in plan["warnings"] if w["code"] == "negative_trace"} == negative
    assert 0 <= plan["confidence"]["confidence"] <= 1 and plan["confidence"]["redraws"] == 64
    assert client.get(f"/v1/plans/{plan['id']}").json() == plan
    assert client.get(f"/v1/analyses/{analysis['id']}/plans").json() == [plan]


def test_hutchinson_plans_report_confidence_and_decide_at_is_accepted(client, digits):
    model = upload_model(client, digits).json()
    dataset = upload_dataset(client, digits.calibration_path).json()
    r = client.post("/v1/analyses", json={"model_id": model["id"], "dataset_id": dataset["id"],
                                          "metric": "hutchinson", "options": {"decide_at": [4, 6]}})
    assert r.status_code == 202, r.text
    analysis = finished(client, r.json()["id"])
    table = client.get(f"/v1/analyses/{analysis['id']}/table").json()
    stopping = table["provenance"]["stopping"]
    assert stopping["rule"] == "decision" and stopping["reason"] == "decided"
    assert set(stopping["confidence_per_budget"]) == {"4.0", "6.0"}
    assert analysis["warnings"] == []  # trained classifier, decided: nothing to flag
    for bits in (4, 6):
        plan = client.post(f"/v1/analyses/{analysis['id']}/plans", json={"budget": {"average_bits": bits}}).json()
        conf = plan["confidence"]
        assert conf["confidence"] >= 0.95 and not conf["exact"] and conf["tolerance"] == 0.05
        assert [w["code"] for w in plan["warnings"]] == []


def test_default_metric_plans_report_confidence(client, digits):
    model = upload_model(client, digits).json()
    dataset = upload_dataset(client, digits.calibration_path).json()
    r = client.post("/v1/analyses", json={"model_id": model["id"], "dataset_id": dataset["id"]})
    assert r.status_code == 202, r.text
    analysis = finished(client, r.json()["id"])
    assert analysis["metric"] == DEFAULT_METRIC == "sampled_gauss_newton"
    table = client.get(f"/v1/analyses/{analysis['id']}/table").json()
    assert table["metric"] == DEFAULT_METRIC
    plan = client.post(f"/v1/analyses/{analysis['id']}/plans", json={"budget": {"average_bits": 4}}).json()
    conf = plan["confidence"]
    assert 0 <= conf["confidence"] <= 1 and conf["redraws"] == 64 and not conf["exact"]  # CIs over sample folds


def test_another_metrics_option_is_refused_at_submit(client, digits):
    model = upload_model(client, digits).json()
    dataset = upload_dataset(client, digits.calibration_path).json()
    r = client.post("/v1/analyses", json={"model_id": model["id"], "dataset_id": dataset["id"],
                                          "options": {"max_probes": 16}})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["field"] == "options.max_probes"
    assert body["detail"].startswith("options.max_probes: unknown option for metric 'sampled_gauss_newton'")
    assert "draws" in body["detail"]  # the options it does take are listed
    assert client.get("/v1/analyses").json() == []  # nothing queued


def test_exact_metric_plans_are_fully_confident(client, digits):
    model = upload_model(client, digits).json()
    r = client.post("/v1/analyses", json={"model_id": model["id"], "metric": "mse"})
    assert r.status_code == 202, r.text
    analysis = finished(client, r.json()["id"])
    plan = client.post(f"/v1/analyses/{analysis['id']}/plans", json={"budget": {"average_bits": 4}}).json()
    assert plan["confidence"] == {"confidence": 1.0, "redraws": 0, "tolerance": 0.05, "exact": True,
                                  "uncertain_units": []}
