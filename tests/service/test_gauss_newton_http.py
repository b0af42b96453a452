"""The gauss_newton metric and the refine_bits loop, chosen over HTTP like any other metric."""

from __future__ import annotations

import pytest

from tests.service.test_plan_confidence import finished
from tests.utils.queue_factories import wait_finished
from tests.utils.service_factories import make_client, upload_dataset, upload_model


@pytest.fixture
def client(tmp_path):
    with make_client(tmp_path) as c:
        yield c


def test_gauss_newton_analysis_with_refinement_over_http(client, digits):
    model = upload_model(client, digits).json()
    dataset = upload_dataset(client, digits.calibration_path).json()
    r = client.post("/v1/analyses", json={"model_id": model["id"], "dataset_id": dataset["id"], "metric": "gauss_newton",
                                          "options": {"refine_bits": 3.5, "refine_rounds": 2}})
    assert r.status_code == 202, r.text
    analysis = finished(client, r.json()["id"])
    assert analysis["metric"] == "gauss_newton"
    table = client.get(f"/v1/analyses/{analysis['id']}/table").json()
    assert table["provenance"]["statistic"] == "max_quadratic_damage"
    assert all(row["statistics"]["ci_halfwidth"] > 0 for row in table["layers"])
    refinement = table["provenance"]["refinement"]
    assert refinement["average_bits"] == 3.5
    assert refinement["measured"] == min(r["measured"] for r in refinement["rounds"])
    check = table["provenance"]["spot_check"]  # on by default: the ≤ 4-bit candidates measured on seeded layers
    assert set(check["candidates"]) == {"int2", "int3", "int4"} and check["layers"]
    assert all(c["factor"] >= 1.0 and set(c["ratios"]) <= set(check["layers"]) for c in check["candidates"].values())
    plan = client.post(f"/v1/analyses/{analysis['id']}/plans", json={"budget": {"average_bits": 4}})
    assert plan.status_code == 201, plan.text
    assert not plan.json()["confidence"]["exact"]  # the damages carry half-widths
    # digits has class targets: cross-entropy, whose Gauss-Newton matrix is KL's, so the damages
    # predict the KL per sample and a measured plan is set against its prediction
    assert table["provenance"]["loss"] == "cross_entropy"
    held_out = upload_dataset(client, digits.evaluation_path).json()
    r = client.post(f"/v1/plans/{plan.json()['id']}/evaluations", json={"dataset_id": held_out["id"]})
    assert r.status_code == 202, r.text
    evaluation = wait_finished(client, r.headers["Location"])
    assert evaluation["status"] == "succeeded", evaluation["error"]
    points = {p["source"]: p for p in evaluation["points"]}
    mine = points["plan"]
    assert mine["measured_over_predicted"] == pytest.approx(mine["measured"]["kl"] / mine["predicted_damage"], rel=1e-9)
    assert all(p["measured_over_predicted"] > 0 for p in points.values())
    expected = [w for w in evaluation["warnings"] if w["code"] == "measured_above_predicted"]
    assert (mine["measured_over_predicted"] > 1.5) == bool(expected)


def test_unknown_metric_lists_gauss_newton(client, digits):
    model = upload_model(client, digits).json()
    r = client.post("/v1/analyses", json={"model_id": model["id"], "metric": "quadratic"})
    assert r.status_code == 422
    assert "metric" in r.text and "gauss_newton" in r.text


def test_a_bad_spot_check_count_is_refused_naming_the_option(client, digits):
    model = upload_model(client, digits).json()
    dataset = upload_dataset(client, digits.calibration_path).json()
    r = client.post("/v1/analyses", json={"model_id": model["id"], "dataset_id": dataset["id"],
                                          "options": {"spot_checks": -1}})
    assert r.status_code == 422
    assert "options.spot_checks" in r.text and "0..64" in r.text
    assert client.get("/v1/analyses").json() == []  # nothing queued
