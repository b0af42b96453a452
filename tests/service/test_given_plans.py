"""Plans you choose (POST /v1/analyses/{id}/plans with an `assignment`): stored with the table's sums,
refused naming the unit when they break a rule, and evaluated like solved plans, so an evaluation's
`worse_than_baseline` advice can be acted on."""

from __future__ import annotations

import pytest

from tests.service.test_plan_confidence import finished
from tests.utils.queue_factories import wait_finished
from tests.utils.service_factories import make_client, upload_dataset, upload_model
from tests.utils.synthetic import problem_dict, stored_analysis


@pytest.fixture
def client(tmp_path):
    with make_client(tmp_path) as c:
        yield c


def test_a_given_assignment_is_stored_with_the_tables_sums_and_no_confidence(client):
    problem = problem_dict(6)
    analysis_id = stored_analysis(client.app.state.settings.resolved_database_url, problem)
    assignment = {u["name"]: "int8" for u in problem["units"]}
    assignment["layer0"] = "int2"
    r = client.post(f"/v1/analyses/{analysis_id}/plans", json={"assignment": assignment})
    assert r.status_code == 201, r.text
    plan = r.json()
    assert r.headers["Location"] == f"/v1/plans/{plan['id']}"
    chosen = {u["name"]: next(o for o in u["options"] if o["candidate"] == assignment[u["name"]]) for u in problem["units"]}
    assert plan["predicted_damage"] == pytest.approx(sum(o["damage"] for o in chosen.values()), rel=1e-12)
    assert plan["total_bytes"] == pytest.approx(sum(o["costs"]["bytes"] for o in chosen.values()), rel=1e-12)
    assert {u["unit"]: u["candidate"] for u in plan["units"]} == assignment
    assert plan["solver"]["status"] == "given" and plan["solver"]["backend"] == "given"
    assert plan["solver"]["bound"] <= plan["predicted_damage"] and plan["solver"]["gap"] > 0  # int2 on layer0 costs
    assert plan["budget"] == {"bytes": plan["total_bytes"]}
    assert plan["confidence"] is None
    assert client.get(f"/v1/plans/{plan['id']}").json() == plan
    assert plan["id"] in [p["id"] for p in client.get(f"/v1/analyses/{analysis_id}/plans").json()]


@pytest.mark.parametrize("body, field, detail", [
    ({"assignment": {"layer0": "int8"}}, "assignment.layer1", "no candidate given"),
    ({"assignment": {"layer0": "fp7"}}, "assignment.layer0", "'fp7' is not one of its permitted candidates"),
    ({"assignment": {"layer0": "int8"}, "budget": {"avg_bits": 4}}, "assignment", "give a budget"),
    ({}, "budget", "give a budget (the solver picks the plan) or an assignment (you pick it)"),
    ({"assignment": {f"layer{i}": "int8" for i in range(6)}, "backend": "highs"}, "backend", "only with a budget"),
])
def test_a_bad_plan_request_is_refused_naming_the_field(client, body, field, detail):
    analysis_id = stored_analysis(client.app.state.settings.resolved_database_url, problem_dict(6))
    before = client.get(f"/v1/analyses/{analysis_id}/plans").json()
    r = client.post(f"/v1/analyses/{analysis_id}/plans", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field
    assert r.json()["detail"].startswith(f"{field}: {detail}")
    assert client.get(f"/v1/analyses/{analysis_id}/plans").json() == before  # nothing stored


def test_an_evaluations_baseline_becomes_a_plan_that_measures_the_same(client, digits):
    model = upload_model(client, digits).json()
    dataset = upload_dataset(client, digits.calibration_path).json()
    r = client.post("/v1/analyses", json={"model_id": model["id"], "dataset_id": dataset["id"]})
    analysis = finished(client, r.json()["id"])
    solved = client.post(f"/v1/analyses/{analysis['id']}/plans", json={"budget": {"avg_bits": 3.5}}).json()
    held_out = upload_dataset(client, digits.evaluation_path).json()

    def evaluate(plan_id: str) -> dict:
        r = client.post(f"/v1/plans/{plan_id}/evaluations", json={"dataset_id": held_out["id"]})
        assert r.status_code == 202, r.text
        done = wait_finished(client, r.headers["Location"])
        assert done["status"] == "succeeded", done["error"]
        return client.get(r.headers["Location"]).json()

    first = evaluate(solved["id"])
    uniform = first["result"]["baselines"]["uniform"]
    r = client.post(f"/v1/analyses/{analysis['id']}/plans", json={"assignment": uniform["assignment"]})
    assert r.status_code == 201, r.text
    given = r.json()
    assert given["total_bytes"] == pytest.approx(uniform["bytes"], rel=1e-12)
    second = evaluate(given["id"])
    mine = {p["source"]: p for p in second["points"]}["plan"]
    assert mine["measured"]["loss"] == pytest.approx(uniform["measured"]["loss"], rel=1e-9)
    assert mine["measured"]["accuracy"] == uniform["measured"]["accuracy"]
