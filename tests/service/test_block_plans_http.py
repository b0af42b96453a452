"""A block-grouped analysis over the real HTTP API (tiny Hugging Face GPT-2, data-free mse, jobs run by
the inline runner's child processes): its plan names decision units, each with its layers; the plan and
its frontier points are measured, and exported as a fake-quantized checkpoint and as an engine config,
every layer of a block taking its unit's format. A layer-grouped analysis of the same model answers as
before, one layer per unit."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load, save_file

from tests.utils.hf_factories import save_tiny
from tests.utils.queue_factories import wait_finished
from tests.utils.service_factories import make_client, upload_dataset, zipped
from workers.exports import get_exporter
from workers.models import find_layers, load_model
from workers.quantizers import parse_candidate

pytest.importorskip("transformers")

BLOCKS = {"transformer.h.0", "transformer.h.1"}


def _analysed(client, model_id: str, grouping: str) -> dict:
    """The analysis (mse, int4 / int8, `grouping`) and its plan at 6 bits."""
    r = client.post("/v1/analyses", json={"model_id": model_id, "metric": "mse", "candidates": ["int4", "int8"],
                                          "options": {"grouping": grouping}})
    assert r.status_code == 202, r.text
    state = wait_finished(client, r.headers["Location"], 300)
    assert state["status"] == "succeeded", state["error"]
    plan = client.post(f"/v1/analyses/{state['id']}/plans", json={"budget": {"avg_bits": 6}})
    assert plan.status_code == 201, plan.text
    return plan.json()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A client, the model's directory, a block- and a layer-grouped plan, and token evaluation data."""
    tmp = tmp_path_factory.mktemp("block-plans")
    directory = tmp / "gpt2"
    save_tiny("gpt2", directory)
    save_file({"inputs": torch.randint(3, 20, (4, 8), generator=torch.Generator().manual_seed(0))},
              str(tmp / "tokens.safetensors"))
    with make_client(tmp) as client:
        r = client.post("/v1/models", files={"file": ("gpt2.zip", zipped(directory))})
        assert r.status_code == 201, r.text
        model = r.json()
        data = upload_dataset(client, tmp / "tokens.safetensors")
        assert data.status_code == 201, data.text
        plans = {g: _analysed(client, model["id"], g) for g in ("block", "layer")}
        yield client, model, str(directory), plans, data.json()["id"]


def _by_layer(plan: dict) -> dict[str, str]:
    """The plan's format for every layer, from its units."""
    return {layer: u["candidate"] for u in plan["units"] for layer in u["layers"]}


def test_a_block_plan_names_units_and_their_layers(served):
    client, model, _, plans, _ = served
    plan = plans["block"]
    units = {u["unit"]: u for u in plan["units"]}
    assert BLOCKS <= set(units) and "transformer.h.0.mlp.c_fc" not in units
    assert units["transformer.h.0"]["layers"] == [
        "transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_fc",
        "transformer.h.0.mlp.c_proj"]
    assert sorted(_by_layer(plan)) == sorted(row["name"] for row in model["layers"])
    # `layers` stays as clients have read it: one entry per unit under its name
    assert [(row["layer"], row["candidate"], row["bytes"]) for row in plan["layers"]] == [
        (u["unit"], u["candidate"], u["bytes"]) for u in plan["units"]]
    assert sum(u["bytes"] for u in plan["units"]) == pytest.approx(plan["total_bytes"])
    assert client.get(f"/v1/plans/{plan['id']}").json()["units"] == plan["units"]
    from service.cli.commands import format_plan

    assert format_plan(plan).splitlines()[0].split()[0] == "unit"  # the CLI's table says what its rows are
    assert format_plan(plans["layer"]).splitlines()[0].split()[0] == "layer"
    front = client.get(f"/v1/analyses/{plan['analysis_id']}/frontier", params={"points": 4}).json()
    assert dict(zip(front["units"], front["unit_layers"], strict=True)) == {u: units[u]["layers"] for u in units}


def test_a_layer_plan_is_one_layer_per_unit(served):
    client, model, _, plans, _ = served
    plan = plans["layer"]
    assert [u["layers"] for u in plan["units"]] == [[u["unit"]] for u in plan["units"]]
    assert [(row["layer"], row["candidate"], row["damage"], row["bytes"]) for row in plan["layers"]] == [
        (u["unit"], u["candidate"], u["damage"], u["bytes"]) for u in plan["units"]]
    assert sorted(_by_layer(plan)) == sorted(row["name"] for row in model["layers"])
    front = client.get(f"/v1/analyses/{plan['analysis_id']}/frontier", params={"points": 4}).json()
    assert front["unit_layers"] == [[u] for u in front["units"]]


@pytest.mark.parametrize("grouping", ["block", "layer"])
def test_plan_and_frontier_evaluations(served, grouping):
    client, _, _, plans, dataset_id = served
    plan = plans[grouping]
    r = client.post(f"/v1/plans/{plan['id']}/evaluations", json={"dataset_id": dataset_id})
    assert r.status_code == 202, r.text
    state = wait_finished(client, r.headers["Location"], 300)
    assert state["status"] == "succeeded", state["error"]
    result = state["result"]
    assert result["plan"]["float_layers"] == 0 and result["plan"]["loss"] >= 0
    assert result["plan"]["bytes"] == pytest.approx(plan["total_bytes"])
    for name in ("uniform", "greedy"):
        assert result["baselines"][name]["measured"]["float_layers"] == 0
    r = client.post(f"/v1/analyses/{plan['analysis_id']}/frontier/evaluations",
                    json={"dataset_id": dataset_id, "points": 2})
    assert r.status_code == 202, r.text
    state = wait_finished(client, r.headers["Location"], 300)
    assert state["status"] == "succeeded", state["error"]
    assert [p["measured"]["float_layers"] for p in state["result"]["points"]] == [0, 0]


@pytest.mark.parametrize("grouping", ["block"])  # layer plans of a tied GPT-2: test_export_jobs.py
def test_exports(served, grouping):
    client, _, directory, plans, _ = served
    plan = plans[grouping]
    by_layer = _by_layer(plan)
    r = client.get(f"/v1/plans/{plan['id']}/export", params={"format": "safetensors"})
    assert r.status_code == 200, r.text
    header = json.loads(r.content[8 : 8 + int.from_bytes(r.content[:8], "little")])
    assert json.loads(header["__metadata__"]["bitplan_plan"]) == by_layer
    state = load(r.content)
    for info, weight in find_layers(load_model({"format": "hf", "path": directory})):
        expected = info.quantize(parse_candidate(by_layer[info.name]), weight).to(weight.dtype)
        assert torch.equal(state[f"{info.name}.weight"], expected), info.name

    # the export job builds the same checkpoint
    r = client.post(f"/v1/plans/{plan['id']}/exports", json={"format": "safetensors"})
    assert r.status_code == 202, r.text
    job = wait_finished(client, r.headers["Location"], 300)
    assert job["status"] == "succeeded", job["error"]
    built = load(client.get(f"{r.headers['Location']}/file").content)
    assert built.keys() == state.keys() and all(torch.equal(built[k], state[k]) for k in built)

    r = client.get(f"/v1/plans/{plan['id']}/export", params={"format": "gptqmodel"})
    assert r.status_code == 200, r.text
    read = get_exporter("gptqmodel").read(r.content, list(by_layer))
    for layer, candidate in by_layer.items():
        if layer.startswith("transformer.h."):  # GPTQ keeps embeddings 16-bit (and says so)
            assert read[layer]["bits"] == int(candidate[3:]), layer


def test_a_problem_stored_before_it_carried_groups_gets_them_from_the_table():
    import uuid
    from types import SimpleNamespace

    from service.core import planning

    unit = {"name": "b.0", "weights": 4, "options": [{"candidate": "int4", "damage": 1.0, "costs": {"bytes": 2}}]}
    old = SimpleNamespace(id=str(uuid.uuid4()), problem={"version": 1, "units": [unit]},
                          table={"groups": {"b.0": ["b.0.q", "b.0.k"]}})
    assert planning.unit_choices(planning.problem_of(old), {"b.0": "int4"}) == [
        {"unit": "b.0", "candidate": "int4", "damage": 1.0, "bytes": 2.0, "layers": ["b.0.q", "b.0.k"]}]
