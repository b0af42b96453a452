"""Evaluations through the real job system: a digits MLP analysed, planned and measured by child
processes of the inline runner (SQLite), once on PostgreSQL; frontier points with rank agreement,
cancel, and inputs refused at the edge or by the job."""

from __future__ import annotations

import json
import time

import pytest

from service.storage.db.migrate import at_head, upgrade
from tests.utils.queue_factories import wait_finished
from tests.utils.service_factories import make_client, upload_dataset, upload_model

TERMINAL = ("succeeded", "failed", "cancelled")


def _wait(client, url: str, timeout: float = 180) -> dict:
    return wait_finished(client, url, timeout)


def _analysed(client, digits) -> dict:
    """Ids of a model, its calibration and evaluation data, a succeeded analysis and a 4-bit plan."""
    model = upload_model(client, digits, name="digits").json()
    calibration = upload_dataset(client, digits.calibration_path).json()
    evaluation = upload_dataset(client, digits.evaluation_path).json()
    analysis = client.post("/v1/analyses", json={
        "model_id": model["id"], "dataset_id": calibration["id"], "candidates": ["int2", "int4", "int8"],
        "metric": "hutchinson", "options": {"max_probes": 64}}).json()
    state = _wait(client, f"/v1/analyses/{analysis['id']}")
    assert state["status"] == "succeeded", state["error"]
    plan = client.post(f"/v1/analyses/{analysis['id']}/plans", json={"budget": {"average_bits": 4}}).json()
    return {"model": model["id"], "calibration": calibration["id"], "evaluation": evaluation["id"],
            "analysis": analysis["id"], "plan": plan}


@pytest.fixture(scope="module")
def planned(tmp_path_factory, digits):
    with make_client(tmp_path_factory.mktemp("evaluations")) as client:
        yield client, _analysed(client, digits)


def test_plan_evaluation_measures_plan_and_baselines(planned, digits):
    client, ids = planned
    plan = ids["plan"]
    r = client.post(f"/v1/plans/{plan['id']}/evaluations", json={"dataset_id": ids["evaluation"]})
    assert r.status_code == 202, r.text
    assert r.headers["Location"] == f"/v1/evaluations/{r.json()['id']}"
    assert r.json()["status"] in ("queued", "running") and r.json()["target"] == "plan"
    state = _wait(client, r.headers["Location"])
    assert state["status"] == "succeeded", state["error"]
    assert state["attempts"] == 1 and state["progress"]["fraction"] == 1.0
    assert state["float"]["accuracy"] == pytest.approx(digits.accuracy, abs=1e-6)
    points = {p["source"]: p for p in state["points"]}
    assert set(points) == {"plan", "uniform", "greedy", "hawq_v3"}
    mine = points["plan"]
    assert mine["costs"]["bytes"] == pytest.approx(plan["total_bytes"])
    assert mine["average_bits"] == pytest.approx(plan["average_bits"])
    assert mine["predicted_damage"] == pytest.approx(plan["predicted_damage"])
    for p in points.values():  # every baseline at the same bytes or fewer, all measured
        assert p["costs"]["bytes"] <= plan["total_bytes"] * (1 + 1e-9)
        assert 0 <= p["measured"]["accuracy"] <= 1 and p["measured"]["loss_kind"] == "cross_entropy"
        assert 0 <= p["measured"]["top1_agreement"] <= 1 and p["measured"]["kl"] >= 0
    # a 4-bit plan of a digits MLP keeps its accuracy within a few points, and is never worse than uniform
    assert mine["measured"]["accuracy"] >= digits.accuracy - 0.05
    assert mine["measured"]["loss"] <= points["uniform"]["measured"]["loss"] + 1e-9
    assert set(state["result"]["baselines"]) == {"uniform", "greedy", "hawq_v3"}
    assert state["links"]["plan"] == f"/v1/plans/{plan['id']}"


def test_plan_evaluation_refines_at_the_plans_bytes_without_a_new_analysis(planned):
    client, ids = planned
    plan = ids["plan"]
    r = client.post(f"/v1/plans/{plan['id']}/evaluations",
                    json={"dataset_id": ids["evaluation"], "baselines": False, "refine_rounds": 2})
    assert r.status_code == 202, r.text
    state = _wait(client, r.headers["Location"])
    assert state["status"] == "succeeded", state["error"]
    refined = state["result"]["refined"]
    rounds = refined["rounds"]
    assert rounds[0]["round"] == 0 and 2 <= len(rounds) <= 4  # the exact solve, up to 2 rounds, uniform
    assert refined["calibration_measured"] == min(r["measured"] for r in rounds)  # never worse than the start
    assert refined["bytes"] <= plan["total_bytes"] * (1 + 1e-9)
    points = {p["source"]: p for p in state["points"]}
    assert set(points) == {"plan", "refined"}
    assert points["refined"]["measured"]["loss"] == refined["measured"]["loss"]
    assert 0 <= refined["measured"]["accuracy"] <= 1
    assert client.get(f"/v1/analyses/{ids['analysis']}").json()["attempts"] == 1  # no sensitivity recomputed
    for rounds_asked in (11, -1):
        r = client.post(f"/v1/plans/{plan['id']}/evaluations", json={"dataset_id": ids["evaluation"],
                                                                     "refine_rounds": rounds_asked})
        assert r.status_code == 422 and r.json()["field"] == "refine_rounds"


def test_refining_an_analysis_without_calibration_data_is_refused(planned):
    from tests.utils.synthetic import problem_dict, stored_analysis

    client, ids = planned
    analysis_id = stored_analysis(client.app.state.settings.resolved_database_url, problem_dict(4))  # data-free
    plan = client.post(f"/v1/analyses/{analysis_id}/plans", json={"budget": {"avg_bits": 4}}).json()
    before = client.get(f"/v1/analyses/{analysis_id}/evaluations").json()
    r = client.post(f"/v1/plans/{plan['id']}/evaluations", json={"dataset_id": ids["evaluation"], "refine_rounds": 1})
    assert r.status_code == 422 and r.json()["field"] == "refine_rounds"
    assert "without calibration data" in r.json()["detail"]
    assert client.get(f"/v1/analyses/{analysis_id}/evaluations").json() == before  # nothing queued


def test_frontier_evaluation_stores_rank_agreement(planned):
    client, ids = planned
    analysis = ids["analysis"]
    r = client.post(f"/v1/analyses/{analysis}/frontier/evaluations",
                    json={"dataset_id": ids["evaluation"], "points": 20, "k": 3})
    assert r.status_code == 202, r.text
    chosen = r.json()["request"]["points"]
    assert len(chosen) == 3 and chosen[0]["index"] == 0 and "assignment" not in chosen[0]
    # Followed over Server-Sent Events, as for analyses: `evaluation` events until it ends.
    with client.stream("GET", f"{r.headers['Location']}/events") as events:
        assert events.status_code == 200 and events.headers["content-type"].startswith("text/event-stream")
        blocks = [b for b in "".join(events.iter_text()).split("\n\n") if b.strip()]
    statuses = [json.loads(b.split("data: ", 1)[1])["status"] for b in blocks if "event: evaluation" in b]
    assert statuses[-1] == "succeeded" and blocks[-1].startswith("event: end")
    state = client.get(r.headers["Location"]).json()
    assert state["status"] == "succeeded", state["error"]
    frontier = client.get(f"/v1/analyses/{analysis}/frontier", params={"points": 20}).json()
    assert chosen[-1]["index"] == len(frontier["points"]) - 1
    assert [p["frontier_index"] for p in state["points"]] == [c["index"] for c in chosen]
    for p in state["points"]:  # each measured point is the stored frontier point it names
        stored = frontier["points"][p["frontier_index"]]
        assert p["costs"] == stored["costs"] and p["predicted_damage"] == pytest.approx(stored["damage"])
    agreement = state["rank_agreement"]
    assert agreement["n"] == 3 and -1 <= agreement["spearman"] <= 1 and -1 <= agreement["kendall_tau_b"] <= 1
    # the cheapest point (most damage predicted) is measured worst: the proxy orders the ends right
    losses = [p["measured"]["loss"] for p in state["points"]]
    assert losses[0] == max(losses)

    listed = client.get(f"/v1/analyses/{analysis}/evaluations").json()
    mine = next(e for e in listed if e["id"] == state["id"])
    assert mine["points"] == state["points"] and mine["result"] is None
    quality = client.get(f"/v1/analyses/{analysis}/proxy-quality")
    assert quality.status_code == 200, quality.text  # no loss_delta analysis, but measured frontier points
    rows = quality.json()["frontier_evaluations"]
    assert {"evaluation_id": state["id"], "dataset_id": ids["evaluation"], "cost": "bytes",
            "points_requested": 20, **agreement} in rows
    assert "loss_delta" in quality.json()["metrics_unavailable"]


def test_cancel_an_evaluation(planned):
    client, ids = planned
    r = client.post(f"/v1/analyses/{ids['analysis']}/frontier/evaluations",
                    json={"dataset_id": ids["evaluation"], "points": 200, "k": 100, "options": {"batch_size": 1}})
    assert r.status_code == 202, r.text
    url = r.headers["Location"]
    deadline = time.monotonic() + 60
    while client.get(url).json()["status"] == "queued":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    cancel = client.post(f"{url}/cancel")
    assert cancel.status_code == 202, cancel.text
    started = time.monotonic()
    state = _wait(client, url, timeout=30)
    assert state["status"] == "cancelled" and state["points"] == []
    assert time.monotonic() - started < 10
    assert client.post(f"{url}/cancel").status_code == 202  # cancelling again is a no-op
    assert client.post("/v1/evaluations/nope/cancel").json()["field"] == "evaluation_id"


def test_bad_inputs(planned, tmp_path):
    import torch
    from safetensors.torch import save_file

    client, ids = planned
    plan_url = f"/v1/plans/{ids['plan']['id']}/evaluations"
    r = client.post(plan_url, json={"dataset_id": "nope"})
    assert r.status_code == 404 and r.json()["field"] == "dataset_id"
    r = client.post("/v1/plans/nope/evaluations", json={"dataset_id": ids["evaluation"]})
    assert r.status_code == 404 and r.json()["field"] == "plan_id"
    r = client.post(plan_url, json={"dataset_id": ids["evaluation"], "options": {"batch_sise": 8}})
    assert r.status_code == 422 and "batch_sise" in r.text
    front_url = f"/v1/analyses/{ids['analysis']}/frontier/evaluations"
    r = client.post(front_url, json={"dataset_id": ids["evaluation"], "k": 0})
    assert r.status_code == 422 and "k" in r.json()["field"]
    r = client.post(front_url, json={"dataset_id": ids["evaluation"], "cost": "watts"})
    assert r.status_code == 422 and r.json()["field"] == "cost"
    assert client.get("/v1/evaluations/nope").status_code == 404
    assert client.get("/v1/analyses/nope/evaluations").status_code == 404

    # an analysis that has not succeeded yet: 409
    pending = client.post("/v1/analyses", json={"model_id": ids["model"], "dataset_id": ids["calibration"]}).json()
    r = client.post(f"/v1/analyses/{pending['id']}/frontier/evaluations", json={"dataset_id": ids["evaluation"]})
    assert r.status_code == 409 and "not succeeded" in r.text
    client.post(f"/v1/analyses/{pending['id']}/cancel")

    # evaluation data the model cannot take: the job fails, saying so
    path = tmp_path / "wrong.safetensors"
    save_file({"inputs": torch.randn(16, 32), "targets": torch.zeros(16, dtype=torch.long)}, str(path))
    wrong = upload_dataset(client, path).json()
    r = client.post(plan_url, json={"dataset_id": wrong["id"], "baselines": False})
    assert r.status_code == 202, r.text
    state = _wait(client, r.headers["Location"])
    assert state["status"] == "failed" and state["attempts"] == 1
    assert "evaluation batch of shape [16, 32]" in state["error"] and "cannot be multiplied" in state["error"]
    _wait(client, f"/v1/analyses/{pending['id']}")


def test_evaluation_on_postgres(tmp_path, digits, postgres_url):
    upgrade(postgres_url)
    assert at_head(postgres_url)
    with make_client(tmp_path, postgres_url) as client:
        ids = _analysed(client, digits)
        r = client.post(f"/v1/analyses/{ids['analysis']}/frontier/evaluations",
                        json={"dataset_id": ids["evaluation"], "points": 10, "k": 2})
        assert r.status_code == 202, r.text
        state = _wait(client, r.headers["Location"])
        assert state["status"] == "succeeded", state["error"]
        assert state["rank_agreement"]["n"] == 2 and len(state["points"]) == 2
        assert [e["id"] for e in client.get(f"/v1/analyses/{ids['analysis']}/evaluations").json()] == [state["id"]]
