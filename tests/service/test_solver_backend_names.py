"""An unknown solver back-end name is bad input (422 naming `backend` and listing the valid names), never a 500."""

from __future__ import annotations

import pytest

from solver.backends import backend_names
from tests.utils.service_factories import make_client
from tests.utils.synthetic import problem_dict, stored_analysis


@pytest.fixture
def client(tmp_path):
    with make_client(tmp_path, run_jobs=False) as c:
        yield c


def _assert_names_backend(r) -> None:
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["field"] == "backend"
    for name in ("auto", *backend_names()):
        assert name in body["detail"]


@pytest.mark.parametrize("backend", ["", "nope"])
def test_unknown_backend_on_a_plan_is_422(client, backend):
    analysis_id = stored_analysis(client.app.state.settings.resolved_database_url, problem_dict(4))
    r = client.post(f"/v1/analyses/{analysis_id}/plans", json={"budget": {"average_bits": 4}, "backend": backend})
    _assert_names_backend(r)
    assert client.get(f"/v1/analyses/{analysis_id}/plans").json() == []  # nothing stored


@pytest.mark.parametrize("backend", ["", "nope"])
@pytest.mark.parametrize("request_part", [{"budget": {"average_bits": 4}}, {"frontier": {"cost": "bytes", "points": 5}}])
def test_unknown_backend_on_solve_is_422(client, backend, request_part):
    r = client.post("/v1/solve", json={"problem": problem_dict(4), "backend": backend, **request_part})
    _assert_names_backend(r)


def test_a_known_backend_still_solves(client):
    r = client.post("/v1/solve", json={"problem": problem_dict(4), "backend": "mckp", "budget": {"average_bits": 4}})
    assert r.status_code == 200, r.text
    assert r.json()["plan"]["solver"]["backend"] == "mckp"
