"""The client-side CLI over real HTTP: batch files, submit/status/plan, with auth on and a job limit of 1."""

from __future__ import annotations

import json

import pytest
import yaml

from service.cli.batch import BatchError, load_batch
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
        from service.storage import tokens
        from service.storage.db.session import session_scope

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
    assert main(["plan", analysis_id, "--bytes", "1", "--url", url, "--token", token]) == 2  # a 4xx: exit 2
    err = capsys.readouterr().err
    assert "budget" in err and len(err.strip().splitlines()) == 1
    assert main(["status", analysis_id, "--url", url]) == 2  # no token: 401
    err = capsys.readouterr().err
    assert "401" in err and len(err.strip().splitlines()) == 1


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
    assert [j.budgets for j in jobs] == [[{"avg_bits": 3.0}, {"bytes": 100.0}], []]
    assert jobs[0].model == tmp_path / "m.safetensors"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump([{"model": "m", "budgets": [{"avg_bits": "four"}]}]))
    with pytest.raises(BatchError, match="job 1: budgets"):
        load_batch(bad)
    bad.write_text(yaml.safe_dump([{"modle": "m"}]))
    with pytest.raises(BatchError, match="job 1: unknown key 'modle' \\(did you mean 'model'\\?\\); valid keys: name, model"):
        load_batch(bad)
    assert main(["batch", str(bad), "--url", "http://127.0.0.1:9"]) == 2


def test_batch_budget_words_and_typos_say_what_is_valid(tmp_path, capsys):
    """The solver's words and forms (number, COST=LIMIT, object, alias); a `budget:` typo is named."""
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump([{"model": "m.pt2", "budgets": [4, "avg_bits=3", {"average_bits": 5},
                                                                   {"avg_bits": 4, "latency_ms": 3}, "bytes=1e4"]}]))
    (job,) = load_batch(path)
    assert job.budgets == [{"avg_bits": 4.0}, {"avg_bits": 3.0}, {"avg_bits": 5.0},
                           {"avg_bits": 4.0, "latency_ms": 3.0}, {"bytes": 1e4}]
    path.write_text(yaml.safe_dump([{"model": "m.pt2", "budget": [4]}]))
    with pytest.raises(BatchError) as err:
        load_batch(path)
    assert str(err.value).startswith("job 1: unknown key 'budget' (did you mean 'budgets'?); valid keys: ")
    assert "budgets" in str(err.value).split("valid keys: ")[1].split(", ")
    for bad, words in [({"avg_bits": 4, "bytes": 10}, "avg_bits or bytes"), ("avg_bits 4", "COST=LIMIT")]:
        path.write_text(yaml.safe_dump([{"model": "m.pt2", "budgets": [bad]}]))
        with pytest.raises(BatchError, match=f"job 1: budgets.*{words}"):
            load_batch(path)
    path.write_text(yaml.safe_dump({"job": [{"model": "m.pt2"}]}))
    with pytest.raises(BatchError, match="unknown top-level key 'job' \\(did you mean 'jobs'\\?\\)"):
        load_batch(path)
    assert main(["batch", str(path)]) == 2
    assert "unknown top-level key 'job'" in capsys.readouterr().err


def test_batch_schema_is_served_and_describes_the_file(tmp_path):
    import jsonschema_rs  # comes with schemathesis (the test extra)

    from tests.utils.service_factories import make_client

    with make_client(tmp_path, run_jobs=False) as client:
        r = client.get("/v1/schemas/batch")
    assert r.status_code == 200
    schema = r.json()
    assert jsonschema_rs.meta.is_valid(schema)
    validator = jsonschema_rs.Draft202012Validator(schema)
    assert validator.is_valid({"jobs": [{"model": "m.pt2", "budgets": [4, "avg_bits=3", {"bytes": 10}]}]})
    assert validator.is_valid([{"model": "m.pt2"}])
    assert not validator.is_valid([{"model": "m.pt2", "budget": [4]}])  # the typo
    assert not validator.is_valid({"job": [{"model": "m.pt2"}]})


def test_batch_help_documents_the_format(capsys):
    with pytest.raises(SystemExit):
        main(["batch", "--help"])
    out = capsys.readouterr().out
    assert "budgets: [4, {avg_bits: 3}" in out and "/v1/schemas/batch" in out


def test_plan_table_shows_confidence_and_warnings_per_layer():
    from service.cli.commands import format_plan

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


def test_cli_pipeline_submit_plan_frontier_export(server, digits, tmp_path, capsys):
    """What a pipeline scripts: submit with --options/--name, a combined budget, the frontier, an export."""
    from service.cli.client import BitplanClient

    url, token = server
    auth = ["--url", url, "--token", token]
    code = main(["submit", str(digits.weights_path), "--spec", json.dumps(_spec(digits)),
                 "--dataset", str(digits.calibration_path), "--candidates", "int4,int8", "--wait",
                 "--metric", "hutchinson", "--options", '{"max_probes": 16}', "--name", "pipeline-digits", *auth])
    out, err = capsys.readouterr()
    assert code == 0, err
    analysis_id = out.splitlines()[0]
    with BitplanClient(url, token=token) as client:
        analysis = client.analysis(analysis_id)
        assert analysis["options"]["max_probes"] == 16
        assert client._json(client._http.get(f"/v1/models/{analysis['model_id']}"))["name"] == "pipeline-digits"

    assert main(["plan", analysis_id, "--bits", "6", "--budget", "flops=1e12", "--json", *auth]) == 2
    err = capsys.readouterr().err
    assert "budget.flops: unknown cost 'flops'; valid: " in err and len(err.strip().splitlines()) == 1
    assert "avg_bits" in err.strip().split("valid: ")[1].split(", ")
    assert main(["plan", analysis_id, "--bits", "8", "--budget", "bops=1e15", "--json", *auth]) == 0
    assert json.loads(capsys.readouterr().out)["budget"] == {"bops": 1e15, "avg_bits": 8.0}
    assert main(["plan", analysis_id, "--budget", "avg_bits=6", "--json", *auth]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["budget"] == {"avg_bits": 6.0} and plan["average_bits"] <= 6.0
    assert plan["solver"]["status"] == "optimal" and plan["solver"]["tolerance"] <= 1e-9
    # a plan you chose: every unit at int8 from a file, stored with the table's sums
    chosen = tmp_path / "chosen.json"
    chosen.write_text(json.dumps({layer["layer"]: "int8" for layer in plan["layers"]}))
    assert main(["plan", analysis_id, "--assignment", str(chosen), *auth]) == 0
    table = capsys.readouterr().out
    assert "(given, gap " in table and "confidence none (a given plan: nothing was solved)" in table
    assert main(["plan", analysis_id, "--assignment", '{"fc1": "int8"}', *auth]) == 2
    assert capsys.readouterr().err.strip().endswith("no candidate given; every unit needs one")
    assert main(["plan", analysis_id, "--assignment", str(chosen), "--bits", "4", *auth]) == 2
    assert "--assignment: give it or a budget" in capsys.readouterr().err
    assert main(["plan", analysis_id, "--bits", "4", "--bytes", "100", *auth]) == 2
    assert "avg_bits or bytes" in capsys.readouterr().err
    assert main(["plan", analysis_id, "--bits", "1", *auth]) == 2
    err = capsys.readouterr().err
    assert "avg_bits ≤ 1 (bytes ≤ " in err and "bits per weight (" in err

    assert main(["frontier", analysis_id, "--points", "5", "--json", *auth]) == 0
    front = json.loads(capsys.readouterr().out)
    assert front["analysis_id"] == analysis_id and len(front["points"]) >= 2
    assert main(["frontier", analysis_id, "--points", "5", *auth]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"{len(front['points'])} points over bytes")

    target = tmp_path / "plan.json"
    assert main(["export", plan["id"], "--format", "json", "-o", str(target), *auth]) == 0
    assert json.loads(target.read_text())["layers"] == {l["layer"]: l["candidate"] for l in plan["layers"]}
    assert main(["export", plan["id"], "--format", "nope", "-o", str(tmp_path / "x"), *auth]) == 2
    assert "format" in capsys.readouterr().err and not (tmp_path / "x").exists()

    # a format that opens the model is built by an export job: the CLI follows it and downloads the file
    checkpoint = tmp_path / "plan.safetensors"
    assert main(["export", plan["id"], "--format", "safetensors", "-o", str(checkpoint), *auth]) == 0
    err = capsys.readouterr().err
    assert "succeeded" in err.splitlines()[-2] and err.splitlines()[-1].startswith(f"wrote {checkpoint} (")
    from safetensors.numpy import load_file

    assert set(load_file(checkpoint)) == {f"{layer['layer']}.weight" for layer in plan["layers"]} | {
        f"{layer['layer']}.bias" for layer in plan["layers"]}
    assert not checkpoint.with_name("plan.safetensors.part").exists()
    assert main(["export", plan["id"], "--format", "safetensors", *auth]) == 2
    assert "give it with -o PATH" in capsys.readouterr().err


def test_unreachable_server_is_one_line_and_exit_2(capsys):
    url = "http://127.0.0.1:9"
    for argv in (["status", "a1"], ["plan", "a1", "--bits", "4"], ["frontier", "a1"], ["export", "p1", "-o", "x"]):
        assert main([*argv, "--url", url]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: cannot reach the server at {url}") and len(err.splitlines()) == 1
