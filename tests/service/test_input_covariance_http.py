"""The input_covariance metric chosen over HTTP like any other metric."""

from __future__ import annotations

import pytest

from tests.service.test_plan_confidence import finished
from tests.utils.service_factories import make_client, upload_dataset, upload_model


@pytest.fixture
def client(tmp_path):
    with make_client(tmp_path) as c:
        yield c


@pytest.mark.parametrize("weighting", ["fisher", "none"])
def test_input_covariance_analysis_over_http(client, digits, weighting):
    model = upload_model(client, digits).json()
    dataset = upload_dataset(client, digits.calibration_path).json()
    r = client.post("/v1/analyses", json={"model_id": model["id"], "dataset_id": dataset["id"],
                                          "metric": "input_covariance", "options": {"weighting": weighting}})
    assert r.status_code == 202, r.text
    analysis = finished(client, r.json()["id"])
    assert analysis["metric"] == "input_covariance"
    table = client.get(f"/v1/analyses/{analysis['id']}/table").json()
    assert table["provenance"]["statistic"] == "max_quadratic_damage"
    assert all(row["statistics"]["ci_halfwidth"] > 0 for row in table["layers"])
    assert all(c["damage"] >= 0 for row in table["layers"] for c in row["candidates"])
    plan = client.post(f"/v1/analyses/{analysis['id']}/plans", json={"budget": {"average_bits": 4}})
    assert plan.status_code == 201, plan.text
    assert not plan.json()["confidence"]["exact"]  # the damages carry half-widths

