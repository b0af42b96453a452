"""One budget parser (solver._budget) behind every tool: the same bad budget is refused with the same
words, naming the same field, by a plan request, POST /v1/solve, a batch file and `bitplan solve`."""

from __future__ import annotations

import json

import pytest
import yaml

from service.cli.batch import BatchError, load_batch
from service.cli import main as cli_main
from solver._budget import BudgetError, asked_budgets
from tests.utils.service_factories import make_client
from tests.utils.synthetic import problem_dict, stored_analysis

# Wrong before any problem is known: refused the same way by the API, batch files and the CLI.
BAD = [
    {"avg_bits": -2},
    {"average_bits": 0},
    {"avg_bits": 4, "bytes": 10},
    {"latency_ms": "fast"},
    {},
]


def _solver_says(budget: dict) -> BudgetError:
    with pytest.raises(BudgetError) as err:
        asked_budgets(budget)
    return err.value


@pytest.fixture
def client(tmp_path):
    with make_client(tmp_path, run_jobs=False) as c:
        yield c


def test_the_same_bad_budget_reads_the_same_everywhere(client, tmp_path, capsys):
    problem = problem_dict(6)
    analysis_id = stored_analysis(client.app.state.settings.resolved_database_url, problem)
    batch = tmp_path / "b.yaml"
    for budget in BAD:
        exc = _solver_says(budget)
        field = f"budget.{exc.word}" if exc.word else "budget"
        plan = client.post(f"/v1/analyses/{analysis_id}/plans", json={"budget": budget})
        solve = client.post("/v1/solve", json={"problem": problem, "budget": budget})
        for r in (plan, solve):
            assert r.status_code == 422, (budget, r.text)
            assert (r.json()["field"], r.json()["detail"]) == (field, f"{field}: {exc.reason}"), budget
        batch.write_text(yaml.safe_dump([{"model": "m.pt2", "budgets": [budget]}]))
        with pytest.raises(BatchError) as err:
            load_batch(batch)
        assert str(err.value) == f"job 1: budgets.0{'.' + exc.word if exc.word else ''}: {exc.reason}", budget
        if budget:  # `bitplan solve --budget WORD=LIMIT ...` says it in the same words
            path = tmp_path / "problem.json"
            path.write_text(json.dumps(problem))
            texts = [a for k, v in budget.items() for a in ("--budget", f"{k}={v}")]
            assert cli_main(["solve", str(path), *texts]) == 2, budget
            assert exc.reason in capsys.readouterr().err, budget


def test_a_word_the_problem_lacks_reads_the_same_in_a_plan_request_and_a_solve(client):
    problem = problem_dict(6)
    analysis_id = stored_analysis(client.app.state.settings.resolved_database_url, problem)
    plan = client.post(f"/v1/analyses/{analysis_id}/plans", json={"budget": {"bops": 5}})
    solve = client.post("/v1/solve", json={"problem": problem, "budget": {"bops": 5}})
    assert plan.status_code == solve.status_code == 422
    assert plan.json()["field"] == solve.json()["field"] == "budget.bops"
    assert plan.json()["detail"] == solve.json()["detail"]
    assert plan.json()["detail"].startswith("budget.bops: unknown cost 'bops'; valid: bytes")
