"""Plans of a block-grouped analysis are keyed by unit (one unit = a whole block); evaluation,
apply_plan and every export spell a unit out as its layers through the one function,
workers.table.layer_formats. A tiny Hugging Face Llama, analysed data-free (mse) with grouping
"block"; a layer-grouped analysis of the same model still gives the same numbers as before."""

import json

import pytest
import torch

pytest.importorskip("transformers")

from tests.utils.hf_factories import save_tiny  # noqa: E402
from tests.utils.workers_factories import save_dataset  # noqa: E402
from workers.evaluation import EvaluationData, Evaluator, apply_plan  # noqa: E402
from workers.evaluation_jobs import evaluate_frontier_job, hawq_v3_problem, run_evaluation_job  # noqa: E402
from workers.exports import ExportPlan, get_exporter  # noqa: E402
from workers.jobs import run_analysis_job  # noqa: E402
from workers.models import find_layers, load_model  # noqa: E402
from workers.quantizers import parse_candidate  # noqa: E402
from workers.table import SensitivityTable, layer_formats, unit_layers  # noqa: E402

BLOCKS = ("model.layers.0", "model.layers.1")
PLAN = {"model.embed_tokens": "int8", "model.layers.0": "int4", "model.layers.1": "int8"}


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """The model's source, its block-grouped and layer-grouped tables, and token evaluation data."""
    tmp = tmp_path_factory.mktemp("blocks")
    source = {"format": "hf", "path": save_tiny("llama", tmp / "llama")}
    tables = {
        grouping: run_analysis_job({"model": source, "candidates": ["int4", "int8"], "metric": "mse",
                                    "options": {"grouping": grouping, "ties": "none"}})
        for grouping in ("block", "layer")
    }
    ids = torch.randint(3, 20, (4, 8), generator=torch.Generator().manual_seed(0))
    return source, tables, save_dataset(tmp / "tokens.safetensors", ids), ids


def _expected(source, plan_by_layer):
    """Each layer's weight as its own round trip through its planned format, computed by hand."""
    model = load_model(source)
    return {info.name: info.quantize(parse_candidate(plan_by_layer[info.name]), weight).to(weight.dtype)
            for info, weight in find_layers(model) if info.name in plan_by_layer}


def test_a_block_unit_stands_for_all_its_layers(llama):
    _, tables, _, _ = llama
    table = SensitivityTable.from_dict(tables["block"])
    assert [u.name for u in table.to_problem().units] == ["model.embed_tokens", *BLOCKS]
    by_layer = layer_formats(PLAN, table.groups)
    assert by_layer == table.layer_formats(PLAN)
    assert sorted(by_layer) == sorted(row.name for row in table.layers)
    assert {by_layer[n] for n in table.groups["model.layers.0"]} == {"int4"}
    assert {by_layer[n] for n in table.groups["model.layers.1"]} == {"int8"}
    assert unit_layers(["model.layers.0"], table.groups)["model.layers.0"] == table.groups["model.layers.0"]
    with pytest.raises(ValueError, match="is a layer of the unit 'model.layers.0'"):
        layer_formats({"model.layers.0.mlp.up_proj": "int4"}, table.groups)
    # grouping "layer": every unit is its layer, the plan is its own expansion
    flat = SensitivityTable.from_dict(tables["layer"])
    assert flat.groups == {}
    plan = {u.name: "int4" for u in flat.to_problem().units}
    assert layer_formats(plan, flat.groups) == plan


def test_evaluator_and_apply_plan_take_unit_plans(llama):
    source, tables, _, ids = llama
    table = SensitivityTable.from_dict(tables["block"])
    model = load_model(source)
    data = EvaluationData(ids, batch_size=2)
    grouped = Evaluator(model, data, groups=table.groups).evaluate(PLAN)
    per_layer = Evaluator(model, data).evaluate_layers(table.layer_formats(PLAN))
    assert grouped == per_layer and grouped["float_layers"] == 0
    assert grouped["loss"] > 0  # int4 blocks move the outputs
    expected = _expected(source, table.layer_formats(PLAN))
    for info, weight in find_layers(apply_plan(model, PLAN, groups=table.groups)):
        assert torch.equal(weight, expected[info.name]), info.name


def test_evaluation_jobs_on_a_block_grouped_analysis(llama):
    source, tables, data, ids = llama
    table = SensitivityTable.from_dict(tables["block"])
    problem = table.stored_problem()
    assert problem["groups"] == table.groups
    request = {"model": source, "dataset_path": data, "assignment": PLAN, "problem": problem,
               "groups": table.groups, "baselines": ["uniform", "greedy"], "options": {"batch_size": 2}}
    result = run_evaluation_job(request)
    direct = Evaluator(load_model(source), EvaluationData(ids, batch_size=2)).evaluate_layers(table.layer_formats(PLAN))
    assert result["plan"]["loss"] == pytest.approx(direct["loss"], rel=1e-12)
    assert result["plan"]["float_layers"] == 0
    for name in ("uniform", "greedy"):
        assert set(result["baselines"][name]["assignment"]) == {"model.embed_tokens", *BLOCKS}
        assert result["baselines"][name]["measured"]["float_layers"] == 0
    front = evaluate_frontier_job({"model": source, "dataset_path": data, "problem": problem, "groups": table.groups,
                                   "plans": [PLAN], "options": {"batch_size": 2}})
    assert front["points"][0]["measured"]["loss"] == pytest.approx(direct["loss"], rel=1e-12)
    # without the table's groups a unit is no layer of the model: refused, never silently float
    with pytest.raises(ValueError, match="'model.layers.0' is not a quantizable layer"):
        run_evaluation_job({**request, "groups": None})
    with pytest.raises(ValueError, match="^groups: must be"):
        run_evaluation_job({**request, "groups": {"model.layers.0": "model.layers.0.mlp.up_proj"}})


def test_hawq_v3_problem_has_the_tables_units():
    rows = [{"name": n, "kind": "linear", "weight_shape": [2, 2], "weights": 4, "mean": 8.0,
             "candidates": [{"candidate": "int4", "damage": 9.0, "bytes": 3, "bits_per_weight": 6.0,
                             "perturbation": 0.5}]}
            for n in ("b.0.q", "b.0.k", "head")]
    table = {"metric": "hutchinson", "statistic": "hessian_trace", "loss": "kl_label_free", "candidates": ["int4"],
             "layers": rows, "groups": {"b.0": ["b.0.q", "b.0.k"]}}
    problem = hawq_v3_problem(table)
    assert [u.name for u in problem.units] == ["b.0", "head"]
    assert problem.unit("b.0").weights == 8
    assert problem.unit("b.0").option("int4").damage == pytest.approx(2 * 8.0 / 4 * 0.5)
    assert problem.unit("b.0").option("int4").costs == {"bytes": 6.0}


def test_exports_of_a_block_grouped_plan(llama, tmp_path):
    source, tables, _, _ = llama
    table = SensitivityTable.from_dict(tables["block"])
    by_layer = table.layer_formats(PLAN)
    plan = ExportPlan.from_table(tables["block"], PLAN, model=source)
    assert plan.assignment == {row.name: by_layer[row.name] for row in table.layers}
    with pytest.raises(ValueError, match="not in the analysis table"):
        ExportPlan.from_table(tables["block"], {**PLAN, "model.layers.9": "int4"})

    # the fake-quantized checkpoint: every layer of a block carries its unit's round trip
    from safetensors.torch import load_file

    path = tmp_path / "model.safetensors"
    get_exporter("safetensors").write(plan, str(path))
    state = load_file(str(path))
    for name, weight in _expected(source, by_layer).items():
        assert torch.equal(state[f"{name}.weight"], weight), name
    read = get_exporter("safetensors").read(path.read_bytes(), [row.name for row in table.layers])
    assert {name: s["bits"] for name, s in read.items()} == {n: int(c[3:]) for n, c in by_layer.items()}

    # an engine config (GPTQModel's `dynamic` rules as vLLM resolves them): 4 bits for block 0's
    # layers, 8 for block 1's
    gptq = get_exporter("gptqmodel")
    config = gptq.read(gptq.export(plan).content, list(by_layer))
    for block, bits in ((BLOCKS[0], 4), (BLOCKS[1], 8)):
        assert {config[n]["bits"] for n in table.groups[block]} == {bits}, json.dumps(config)
