"""The client-side CLI over real HTTP: batch files, submit/status/plan, with auth on and a job limit of 1."""

from __future__ import annotations

import json

import pytest
import yaml

from service.batch import BatchError, load_batch
from service.cli import main
from service.config import Settings
from tests.utils.live_server import live_server
from tests.utils.service_factories import make_client


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server on loopback with auth forced on, one concurrent job per token; yields (url, token)."""
    data = tmp_path_factory.mktemp("server")
    settings = Settings(data_dir=data, auth="on", max_active_jobs_per_token=1, _env_file=None)
    with live_server(settings) as url:
        from service import tokens
        from service.db.session import session_scope

        with session_scope(settings.resolved_database_url) as s:
            secret = tokens.create_token(s, name="cli", scopes=["read", "submit"]).secret
        yield url, secret


def _spec(digits) -> dict:
    return {"architecture": digits.architecture, "hyperparams": digits.hyperparams}


def test_batch_runs_every_job_and_exit_code_reflects_failures(server, digits, tmp_path, capsys):
    url, token = server
    entries = [
        {"name": "four-and-eight", "model": str(digits.weights_path), "spec": _spec(digits),
         "dataset": str(digits.calibration_path), "candidates": ["int4", "int8"], "budgets": [5, {"average_bits": 8}]},
        {"name": "impossible", "model": str(digits.weights_path), "spec": _spec(digits),
         "dataset": str(digits.calibration_path), "candidates": ["int4", "int8"], "budgets": [{"bytes": 10}]},
    ]
    path = tmp_path / "batch.yaml"
    path.write_text(yaml.safe_dump({"jobs": entries}))
    code = main(["batch", str(path), "--url", url, "--token", token, "--poll", "0.3"])
    out, err = capsys.readouterr()
    assert code == 1, out  # the 10-byte budget cannot be met
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["job", "status", "analysis"]
    assert lines[0].split()[-2:] == ["confidence", "warnings"]
    rows = [l for l in lines[2:] if l.startswith("four-and-eight")]
    assert len(rows) == 2 and all(" succeeded " in r for r in rows)
    assert all(r.split()[7].endswith("%") for r in rows)  # each plan's confidence
    assert any("plan failed" in l for l in lines if l.startswith("impossible"))
    assert "four-and-eight" in err and "succeeded" in err  # progress lines, one per job state change

    analysis_id = rows[0].split()[2]
    assert main(["status", analysis_id, "--url", url, "--token", token]) == 0
    assert "succeeded" in capsys.readouterr().out
    assert main(["plan", analysis_id, "--bits", "6", "--url", url, "--token", token]) == 0
    out = capsys.readouterr().out
    assert "bits/weight" in out and "optimal" in out and "confidence " in out
    assert main(["plan", analysis_id, "--bytes", "1", "--url", url, "--token", token]) == 1
    assert "budget" in capsys.readouterr().err
    assert main(["status", analysis_id, "--url", url]) == 1  # no token: 401
    assert "401" in capsys.readouterr().err


def test_submit_waits_with_a_progress_bar(server, digits, tmp_path, capsys):
    url, token = server
    code = main(["submit", str(digits.weights_path), "--spec", json.dumps(_spec(digits)),
                 "--dataset", str(digits.calibration_path), "--candidates", "int4,int8", "--wait",
                 "--url", url, "--token", token])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines()[-1] == "succeeded" and "[" in err and "100.0%" in err


def test_batch_files_are_validated_naming_the_entry(tmp_path, digits):
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text(json.dumps({"model": "m.safetensors", "budgets": [3, {"bytes": 100}]}) + "\n\n"
                     + json.dumps({"model": "n.pt2"}) + "\n")
    jobs = load_batch(jsonl)
    assert [j.budgets for j in jobs] == [[{"average_bits": 3.0}, {"bytes": 100.0}], []]
    assert jobs[0].model == tmp_path / "m.safetensors"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump([{"model": "m", "budgets": [{"gigabytes": 1}]}]))
    with pytest.raises(BatchError, match="job 1: budgets"):
        load_batch(bad)
    bad.write_text(yaml.safe_dump([{"modle": "m"}]))
    with pytest.raises(BatchError, match="job 1"):
        load_batch(bad)
    assert main(["batch", str(bad), "--url", "http://127.0.0.1:9"]) == 2


def test_plan_table_shows_confidence_and_warnings_per_layer():
    from service.commands import format_plan

    plan = {"layers": [{"layer": "fc1", "candidate": "int4", "bytes": 40, "damage": 0.0},
                       {"layer": "fc2", "candidate": "int8", "bytes": 80, "damage": 0.5}],
            "total_bytes": 120, "average_bits": 5.0, "predicted_damage": 0.5, "solver": {"status": "optimal"},
            "links": {"self": "/v1/plans/p1"},
            "confidence": {"confidence": 0.8, "redraws": 64, "tolerance": 0.05, "exact": False,
                           "uncertain_units": [{"unit": "fc2", "share": 0.2}]},
            "warnings": [{"code": "negative_trace", "layer": "fc1", "message": "fc1: Hessian trace -3 is negative",
                          "values": {}},
                         {"code": "low_confidence", "layer": None, "message": "only 80% agree", "values": {}}]}
    lines = format_plan(plan).splitlines()
    assert lines[0].split() == ["layer", "candidate", "bytes", "damage", "warnings"]
    assert lines[1].split()[-1] == "negative_trace" and len(lines[2].split()) == 4
    assert "confidence 80%" in lines[3]
    assert lines[4] == "units whose uncertainty could flip it: fc2 (20%)"
    assert lines[5:] == ["warning [negative_trace] fc1: Hessian trace -3 is negative", "warning [low_confidence] only 80% agree"]
