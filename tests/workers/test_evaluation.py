import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from solver import problem_to_dict
from tests.utils.workers_factories import MLP, save_dataset, save_model, trained_mlp
from workers.analysis import analyse
from workers.data import Calibration
from workers.evaluation import EvaluationData, Evaluator, apply_plan, evaluate_plan, layer_loss_deltas
from workers.evaluation_jobs import baseline_plans, evaluate_frontier_job, hawq_v3_problem, run_evaluation_job
from workers.metrics import get_metric
from workers.quantizers import parse_candidate, parse_candidates

CANDS = ["int2", "int4", "int8"]


def _direct(model, assignment, x):
    q = copy.deepcopy(model)  # overwrite a copy's weights by hand
    for name, cand in assignment.items():
        layer = dict(q.named_modules())[name]
        layer.weight.data = parse_candidate(cand).quantize(layer.weight.data)
    with torch.no_grad():
        return model(x), q(x)


def test_measures_match_a_direct_computation():
    model, x, y = trained_mlp()
    plan = {"fc1": "int2", "fc2": "int4"}
    ref, out = _direct(model, plan, x)
    m = evaluate_plan(model, EvaluationData(x, y, batch_size=16), plan)
    assert m["loss"] == pytest.approx(float(F.cross_entropy(out.double(), y)), rel=1e-9)
    assert m["accuracy"] == pytest.approx(float((out.argmax(1) == y).float().mean()))
    assert m["top1_agreement"] == pytest.approx(float((out.argmax(1) == ref.argmax(1)).float().mean()))
    kl = F.kl_div(torch.log_softmax(out.double(), 1), torch.log_softmax(ref.double(), 1), reduction="batchmean", log_target=True)
    assert m["kl"] == pytest.approx(float(kl), rel=1e-6)
    assert m["cosine"] == pytest.approx(float(F.cosine_similarity(out.double(), ref.double()).mean()), rel=1e-9)
    assert m["perplexity"] is None and m["float_layers"] == 0


def test_caller_model_untouched_and_unknown_layer_rejected():
    model, x, y = trained_mlp()
    before = model.fc1.weight.detach().clone()
    ev = Evaluator(model, EvaluationData(x, y))
    ev.evaluate({"fc1": "int2"})
    assert torch.equal(model.fc1.weight, before)
    assert ev.evaluate({})["kl"] == pytest.approx(0.0, abs=1e-12)  # all float = the reference
    assert torch.equal(apply_plan(model, {"fc1": "int8"}).fc1.weight, parse_candidate("int8").quantize(before))
    with pytest.raises(ValueError, match="nope"):
        ev.evaluate({"nope": "int4"})


class TinyLM(nn.Module):
    def __init__(self, vocab=11, dim=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.out = nn.Linear(dim, vocab)

    def forward(self, ids):
        return self.out(torch.tanh(self.emb(ids)))


def test_language_model_perplexity_is_next_token():
    torch.manual_seed(0)
    lm = TinyLM().eval()
    ids = torch.randint(0, 11, (5, 7))
    m = evaluate_plan(lm, EvaluationData(ids, batch_size=2), {"out": "int4"})
    q = apply_plan(lm, {"out": "int4"})
    with torch.no_grad():
        logits = q(ids)[:, :-1].reshape(-1, 11).double()
    nll = float(F.cross_entropy(logits, ids[:, 1:].reshape(-1)))
    assert m["loss_kind"] == "next_token"
    assert m["loss"] == pytest.approx(nll, rel=1e-9)
    assert m["perplexity"] == pytest.approx(math.exp(nll), rel=1e-9)


def test_label_free_loss_and_layer_deltas():
    model, x, _ = trained_mlp()
    ev = Evaluator(model, EvaluationData(x))
    m = ev.evaluate({"fc1": "int2"})
    assert m["loss_kind"] == "kl" and m["loss"] == pytest.approx(m["kl"]) and m["accuracy"] is None
    deltas = layer_loss_deltas(ev, CANDS)
    assert set(deltas) == {"fc1", "fc2"}
    assert deltas["fc1"]["int2"] > deltas["fc1"]["int8"] >= 0


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    model, x, y = trained_mlp()
    table = analyse(model, Calibration(x, y), parse_candidates(CANDS), get_metric("hutchinson", {"max_probes": 32}))
    source = {"format": "safetensors", "path": save_model(tmp / "m.safetensors", model), "architecture": "mlp",
              "hyperparams": MLP}
    return model, table, source, save_dataset(tmp / "d.safetensors", x, y)


def test_baselines_at_the_plan_budget(analysed):
    _, table, _, _ = analysed
    problem = table.to_problem()
    from solver import uniform_plans

    limit = uniform_plans(problem)["int4"].costs["bytes"] + 1  # int8 does not fit, int4 does
    out = baseline_plans(problem, limit, hawq_problem=hawq_v3_problem(table.to_dict()))
    assert out["uniform"]["candidate"] == "int4"
    for name in ("uniform", "greedy", "hawq_v3"):
        assert out[name]["bytes"] <= limit
    # plain HAWQ-v3 damage is the trace formula on the raw perturbation
    row = table.layers[0]
    hawq = hawq_v3_problem(table.to_dict()).unit(row.name)
    c = row.candidates[0]
    assert hawq.option(c.candidate).damage == pytest.approx(max(row.mean, 0) / row.weights * c.perturbation)
    assert "error" in baseline_plans(problem, 1.0, names=("uniform",))["uniform"]


def test_evaluation_and_frontier_jobs(analysed):
    model, table, source, data = analysed
    problem = problem_to_dict(table.to_problem())
    plan = {"fc1": "int4", "fc2": "int8"}
    result = run_evaluation_job(
        {"model": source, "dataset_path": data, "assignment": plan, "problem": problem, "hawq_table": table.to_dict()}
    )
    assert result["plan"]["accuracy"] is not None and result["float"]["loss"] < result["plan"]["loss"] + 1
    assert set(result["baselines"]) == {"uniform", "greedy", "hawq_v3"}
    assert all("measured" in b for b in result["baselines"].values()), result["baselines"]
    front = evaluate_frontier_job({"model": source, "dataset_path": data, "problem": problem, "points": 4})
    assert 1 <= len(front["points"]) <= 4
    assert all(p["measured"]["loss"] >= 0 for p in front["points"])
    byts = [p["bytes"] for p in front["points"]]
    assert byts == sorted(byts)
    searched = evaluate_frontier_job(
        {"model": source, "dataset_path": data, "problem": problem, "points": 3, "refine_trials": 12}
    )
    for r in searched["refined"]:  # kept only when no measured exact point dominates it
        assert not any(
            p["bytes"] <= r["bytes"] and p["measured"]["loss"] <= r["measured"]["loss"] for p in searched["points"]
        )
    with pytest.raises(ValueError, match="points"):
        evaluate_frontier_job({"model": source, "dataset_path": data, "problem": problem, "points": 0})
    with pytest.raises(ValueError, match="assignment"):
        run_evaluation_job({"model": source, "dataset_path": data, "assignment": {}})


def test_a_measured_plan_says_when_a_baseline_beat_it_and_when_it_far_exceeds_its_prediction(analysed):
    _, table, source, data = analysed
    problem = problem_to_dict(table.to_problem())
    bad = {"fc1": "int2", "fc2": "int8"}  # the wide first layer at 2 bits: more bytes than uniform int4, worse
    result = run_evaluation_job({"model": source, "dataset_path": data, "assignment": bad, "problem": problem})
    uniform = result["baselines"]["uniform"]
    assert uniform["candidate"] == "int4" and uniform["bytes"] <= result["plan"]["bytes"]
    worse = {w["values"]["baseline"]: w for w in result["warnings"] if w["code"] == "worse_than_baseline"}
    assert worse["uniform"]["values"]["baseline_loss"] == uniform["measured"]["loss"] < result["plan"]["loss"]
    assert "uniform baseline" in worse["uniform"]["message"]
    # a Hutchinson table's damages are not KL: no ratio, no interaction warning
    assert result["plan"]["measured_over_predicted"] is None
    assert not [w for w in result["warnings"] if w["code"] == "measured_above_predicted"]

    for unit in problem["units"]:  # damages a thousandth of the truth, said to be KL per output row
        for option in unit["options"]:
            option["damage"] *= 1e-3
    good = {"fc1": "int4", "fc2": "int8"}
    result = run_evaluation_job({"model": source, "dataset_path": data, "assignment": good, "problem": problem,
                                 "predicts": "kl"})
    plan = result["plan"]
    assert plan["measured_over_predicted"] == pytest.approx(plan["kl"] / plan["predicted_damage"], rel=1e-12)
    (above,) = [w for w in result["warnings"] if w["code"] == "measured_above_predicted"]
    assert above["values"]["plan"] == "the plan" and above["values"]["ratio"] == plan["measured_over_predicted"] > 100
    assert not [w for w in result["warnings"] if w["code"] == "worse_than_baseline"]  # it measured best
    front = evaluate_frontier_job({"model": source, "dataset_path": data, "problem": problem, "points": 2,
                                   "predicts": "kl"})
    assert len(front["warnings"]) == len(front["points"]) == 2  # every point far above its prediction
    assert all(p["measured_over_predicted"] > 100 for p in front["points"])
