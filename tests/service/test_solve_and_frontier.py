"""Bring-your-own-table solving (POST /v1/solve, `bitplan solve`) and stored frontiers of analyses."""

from __future__ import annotations

import json

import pytest

from service.cli import main as cli_main
from tests.utils.service_factories import make_client
from tests.utils.synthetic import problem_dict, stored_analysis


@pytest.fixture
def client(tmp_path):
    with make_client(tmp_path) as c:
        yield c


def non_dominated(points, cost):
    for a in points:
        for b in points:
            if b is a:
                continue
            if b["costs"][cost] <= a["costs"][cost] and b["damage"] < a["damage"] - 1e-12 * max(1, abs(a["damage"])):
                return False
    return True


def test_solve_plan_and_frontier(client):
    problem = problem_dict(8)
    total = sum(u["weights"] for u in problem["units"])
    r = client.post("/v1/solve", json={"problem": problem, "budget": {"average_bits": 4.5},
                                       "frontier": {"cost": "bytes", "points": 20}})
    assert r.status_code == 200, r.text
    body = r.json()
    plan = body["plan"]
    assert plan["costs"]["bytes"] <= 4.5 * total / 8 + 1e-6
    assert plan["solver"]["status"] == "optimal"
    assert set(plan["assignment"]) == {u["name"] for u in problem["units"]}
    front = body["frontier"]
    costs = [p["costs"]["bytes"] for p in front["points"]]
    assert costs == sorted(costs) and len(costs) >= 2
    assert non_dominated(front["points"], "bytes")
    # The plan at 4.5 bits is one of the frontier's optimal trade-offs or dominated by none of them.
    assert all(not (p["costs"]["bytes"] <= plan["costs"]["bytes"] and p["damage"] < plan["damage"] - 1e-12)
               for p in front["points"])
    assert {b["name"] for b in front["baselines"]} >= {"uniform int8", "uniform int2"}
    assert all(len(p["choices"]) == len(problem["units"]) for p in front["points"])


def test_solve_rejects_bad_input(client):
    r = client.post("/v1/solve", json={"problem": {"units": "nope"}, "budget": {"bytes": 10}})
    assert r.status_code == 422 and r.json()["field"] == "problem" and "units" in r.json()["detail"]
    r = client.post("/v1/solve", json={"problem": problem_dict(3)})
    assert r.status_code == 422
    r = client.post("/v1/solve", json={"problem": problem_dict(3), "budget": {"bops": 5}})
    assert r.status_code == 422 and r.json()["field"] == "budget.bops"
    r = client.post("/v1/solve", json={"problem": problem_dict(3), "budget": {"bytes": 1}})
    assert r.status_code == 422 and r.json()["minimums"]["bytes"] > 1


def test_analysis_frontier_is_stored(client):
    url = client.app.state.settings.resolved_database_url
    analysis_id = stored_analysis(url, problem_dict(12, seed=3))
    r = client.get(f"/v1/analyses/{analysis_id}/frontier", params={"points": 15})
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["cost"] == "bytes" and first["points"] and non_dominated(first["points"], "bytes")
    again = client.get(f"/v1/analyses/{analysis_id}/frontier", params={"points": 15}).json()
    assert again == first  # served from the database, not recomputed (solve_seconds identical)
    r = client.get(f"/v1/analyses/{analysis_id}/frontier", params={"cost": "latency_ms"})
    assert r.status_code == 422 and r.json()["field"] == "cost"
    r = client.get(f"/v1/analyses/{analysis_id}/frontier", params={"points": 1})
    assert r.status_code == 422 and r.json()["field"] == "points"


def test_cli_solve(tmp_path, capsys):
    path = tmp_path / "problem.json"
    path.write_text(json.dumps(problem_dict(5)))
    assert cli_main(["solve", str(path), "--budget", "avg_bits=4", "--frontier", "10", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["plan"]["status"] == "optimal" and len(out["frontier"]["points"]) >= 2
    assert cli_main(["solve", str(path), "--budget", "bytes=1"]) == 1
    assert "infeasible" in capsys.readouterr().err
    assert cli_main(["solve", str(path), "--budget", "nonsense"]) == 2
