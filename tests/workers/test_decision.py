"""Sound defaults and stopping on the decision (issue 10): the loss a model gets, warnings, and
probing that ends when the plan is settled."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.utils.workers_factories import trained_mlp
from workers.analysis import analyse
from workers.data import Calibration
from workers.metrics import DEFAULT_METRIC, get_metric
from workers.quantizers import parse_candidates

CANDIDATES = parse_candidates(["int2", "int4", "int8"])


class DeadLayerNet(nn.Module):
    """`dead` feeds `fc2`, whose weights are zero: the loss does not depend on `dead` (zero gradient,
    zero Hessian block), but its cross terms with fc2 are not zero under cross-entropy, so its trace
    samples scatter around 0 and a relative-CI rule can never stop on it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.dead = nn.Linear(8, 32)
        self.fc2 = nn.Linear(32, 32)
        self.head = nn.Linear(32, 4)
        with torch.no_grad():
            self.fc2.weight.zero_()
            self.fc2.bias.fill_(0.5)

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.relu(self.dead(x)))))


def dead_data(labels: bool) -> Calibration:
    x = torch.randn(128, 8, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 4, (128,), generator=torch.Generator().manual_seed(2))
    return Calibration(x, y if labels else None)


@pytest.mark.parametrize("labels", [True, False], ids=["cross_entropy", "label_free"])
def test_a_dead_layer_stops_in_bounded_probes(labels):
    options = {"max_probes": 512, "probe_batch": 16}
    by_ci = analyse(DeadLayerNet(), dead_data(labels), CANDIDATES, get_metric("hutchinson", {**options, "stop": "ci"}),
                    plan_memory=False)
    assert by_ci.layer("dead").samples == 512 and by_ci.provenance["stopping"]["reason"] == "max_probes"
    table = analyse(DeadLayerNet(), dead_data(labels), CANDIDATES, get_metric("hutchinson", options), plan_memory=False)
    stopping = table.provenance["stopping"]
    assert stopping["reason"] == "decided" and stopping["confidence"] >= 0.95
    assert max(row.samples for row in table.layers) <= 64
    assert all(row.converged for row in table.layers)
    assert not [w for w in table.warnings if w["code"] in ("not_converged", "stopped_early")]


def test_capped_probing_says_it_stopped_early():
    model, x, y = trained_mlp()
    metric = get_metric("hutchinson", {"stop": "ci", "tolerance": 0.001, "min_probes": 4, "max_probes": 8,
                                       "probe_batch": 4})
    table = analyse(model, Calibration(x, y), CANDIDATES, metric, plan_memory=False)
    codes = [(w["code"], w["layer"]) for w in table.warnings]
    assert ("stopped_early", None) in codes and ("not_converged", "fc1") in codes
    early = next(w for w in table.warnings if w["code"] == "stopped_early")
    assert early["values"]["reason"] == "max_probes" and early["values"]["probes"] == 8


def test_max_seconds_bounds_probing():
    model, x, y = trained_mlp()
    metric = get_metric("hutchinson", {"stop": "ci", "tolerance": 1e-6, "max_probes": 10**6, "max_seconds": 0.5,
                                       "probe_batch": 4})
    table = analyse(model, Calibration(x, y), CANDIDATES, metric, plan_memory=False)
    assert table.provenance["stopping"]["reason"] == "max_seconds"
    assert any(w["code"] == "stopped_early" and w["values"]["reason"] == "max_seconds" for w in table.warnings)


def test_decision_at_the_budgets_asked_agrees_with_a_long_run():
    """The plan at the asked budgets from the decided (short) run is the one a 10%-CI run gives."""
    from solver import average_bits_budget, solve

    model, x, y = trained_mlp()
    short = analyse(model, Calibration(x, y), CANDIDATES, get_metric("hutchinson", {"decide_at": [5, 7]}),
                    plan_memory=False)
    long = analyse(model, Calibration(x, y), CANDIDATES, get_metric("hutchinson", {"stop": "ci", "tolerance": 0.05}),
                   plan_memory=False)
    assert max(r.samples for r in short.layers) < max(r.samples for r in long.layers)
    for bits in (5, 7):
        plans = [solve(t.to_problem(), [average_bits_budget(t.to_problem(), bits)]).assignment for t in (short, long)]
        assert plans[0] == plans[1]
    assert all(c.damage_ci is not None and c.damage_ci >= 0 for r in short.layers for c in r.candidates)
    assert set(short.halfwidths()) == {"fc1", "fc2"}


@pytest.mark.parametrize("options", [{"stop": "always"}, {"max_seconds": 0}, {"decide_at": []},
                                     {"decision_confidence": 1.5}, {"loss": "hinge"}])
def test_bad_stopping_options_name_the_field(options):
    (field,) = options
    with pytest.raises(ValueError, match=rf"^options\.{field}:"):
        get_metric("hutchinson", options)


def test_decide_at_outside_the_candidates_range_is_refused():
    model, x, y = trained_mlp()
    with pytest.raises(ValueError, match=r"^options\.decide_at: 1\.0 average bits is outside"):
        analyse(model, Calibration(x, y), CANDIDATES, get_metric("hutchinson", {"decide_at": 1}), plan_memory=False)


def test_cross_entropy_needs_targets():
    model, x, _ = trained_mlp()
    with pytest.raises(ValueError, match=r"^options\.loss: 'cross_entropy' needs a dataset with targets"):
        analyse(model, Calibration(x, None), CANDIDATES, get_metric("hutchinson", {"loss": "cross_entropy"}),
                plan_memory=False)


# ---------------------------------------------------------------------------------- language models
@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    pytest.importorskip("transformers")
    from tests.utils.hf_factories import save_tiny, write_jsonl

    root = tmp_path_factory.mktemp("gpt2")
    return save_tiny("gpt2", root / "model"), write_jsonl(root / "calib.jsonl")


def run_gpt2(gpt2, metric="hutchinson", **options):
    """metric None: the request names none (the default path)."""
    from workers.jobs import run_analysis_job

    directory, text = gpt2
    request = {"model": {"format": "hf", "path": directory}, "dataset_path": text, "candidates": ["int4", "int8"],
               "options": {"max_probes": 32, **options} if metric == "hutchinson" else options}
    if metric is not None:
        request["metric"] = metric
    return run_analysis_job(request)


@pytest.mark.parametrize("metric", [None, "hutchinson"])
def test_random_gpt2_default_loss_is_label_free_with_no_negative_damage(gpt2, metric):
    """Next-token targets are there, but a language model's default loss is label-free: every
    probe of its Gauss-Newton Hessian is ≥ 0, so every trace and damage is (and the default metric's
    quadratic form is ≥ 0 by construction)."""
    out = run_gpt2(gpt2, metric)
    assert out["metric"] == (metric or DEFAULT_METRIC)
    assert out["loss"] == "kl_label_free"
    assert all(row["mean"] >= 0 for row in out["layers"])
    assert all(c["raw_damage"] >= 0 and c["damage"] >= 0 for row in out["layers"] for c in row["candidates"])
    assert not [w for w in out["warnings"] if w["code"] in ("negative_trace", "ci_straddles_zero")]


def test_random_gpt2_cross_entropy_hessian_warns_about_negative_traces(gpt2):
    out = run_gpt2(gpt2, loss="cross_entropy")
    assert out["loss"] == "cross_entropy"
    negative = [row["name"] for row in out["layers"] if row["mean"] < 0]
    assert negative  # the random model is far from a minimum of next-token cross-entropy
    warned = {w["layer"] for w in out["warnings"] if w["code"] == "negative_trace"}
    assert warned == set(negative)
    w = next(w for w in out["warnings"] if w["code"] == "negative_trace")
    assert w["values"]["mean"] < 0 and "set to 0" in w["message"]
