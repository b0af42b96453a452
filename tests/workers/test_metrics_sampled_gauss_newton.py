"""sampled_gauss_newton: its draws average to ½ ΔWᵀ G ΔW from the explicit Gauss-Newton matrix."""

import pytest
import torch
from torch import nn

from tests.workers.test_metrics_gauss_newton import GroupedConvNet, TinyLM, brute_force, tied_forward
from workers.analysis import analyse
from workers.data import Calibration
from workers.metrics import get_metric
from workers.models import find_layers
from workers.quantizers import parse_candidates

CANDIDATES = ["int2", "int3", "int4"]



def sgn_table(model, calibration, candidates=CANDIDATES, seed=0, **options):
    return analyse(model, calibration, parse_candidates(candidates), get_metric("sampled_gauss_newton", options),
                   seed=seed)


def explicit_damages(model, x, kind, fn=None, names=None):
    param_names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for info, weight in find_layers(model):
        if names is None or info.name in names:
            for q in parse_candidates(CANDIDATES):
                delta = info.quantize(q, weight) - weight.detach()
                out[info.name, q.name] = brute_force(model, x, param_names[id(weight)], delta, kind, fn)
    return out


def assert_estimates(table, expected, rel):
    for (layer, candidate), value in expected.items():
        assert value > 0
        got = table.layer(layer).candidate(candidate).raw_damage
        assert got == pytest.approx(value, rel=rel), (layer, candidate, got, value)


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_draws_average_to_the_explicit_matrix_on_grouped_convolutions(kind):
    # 12 samples × 300 draws: the sampling spread of each estimate is about √(2 / 3600) ≈ 2.4%
    torch.manual_seed(0)
    model = GroupedConvNet().eval()
    x = torch.randn(12, 2, 4, 4)
    t = sgn_table(model, Calibration(x, None, batch_size=5), draws=300, output_loss=kind)
    assert_estimates(t, explicit_damages(model, x, kind), rel=0.12)
    assert t.metric == "sampled_gauss_newton" and all(r.samples == 12 for r in t.layers)


def test_tied_embedding_counts_both_uses():
    torch.manual_seed(2)
    model = TinyLM(tied=True).eval()
    ids = torch.randint(0, 11, (6, 5))
    t = sgn_table(model, Calibration(ids, None, batch_size=6, token_ids=True), draws=600)
    assert t.layer("embed").shared_with == ["head"]
    assert_estimates(t, explicit_damages(model, ids, "kl", fn=tied_forward, names={"embed"}), rel=0.12)


def test_the_ci_covers_the_explicit_value_and_shrinks_with_draws():
    torch.manual_seed(1)
    model = TinyLM(tied=False).eval()
    ids = torch.randint(0, 11, (32, 5))
    cal = Calibration(ids, None, batch_size=8, token_ids=True)
    few, many = sgn_table(model, cal, draws=4, groups=8), sgn_table(model, cal, draws=64, groups=8)
    expected = explicit_damages(model, ids, "kl")
    for (layer, candidate), value in expected.items():
        a, b = few.layer(layer).candidate(candidate), many.layer(layer).candidate(candidate)
        assert abs(b.raw_damage - value) <= 3 * b.damage_ci / 1.96, (layer, candidate)
        assert b.damage_ci < a.damage_ci
    assert_estimates(many, expected, rel=0.1)


class FixedBatch(nn.Module):
    """Refuses any batch but 4, as a torch.export archive with a static batch dimension does."""

    bitplan_static_batch = 4  # what workers.models marks such an archive with

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        if x.shape[0] != 4:
            raise RuntimeError(f"Guard failed: input.size()[0] == 4 (got {x.shape[0]})")
        return self.inner(x)


def test_a_fixed_batch_model_gives_the_numbers_of_one_sample_at_a_time():
    """Each sample draws from its own seeded generator, so the batch the model is run at (and the
    batch the memory planner picks) does not change the table."""
    torch.manual_seed(4)
    net = GroupedConvNet().eval()
    x = torch.randn(8, 2, 4, 4)
    alone = sgn_table(net, Calibration(x, None, batch_size=3), draws=3, groups=4)
    fixed = sgn_table(FixedBatch(net), Calibration(x, None, batch_size=4), draws=3, groups=4)
    assert alone.provenance["metric_run"] == {"forward_batch": 1, "draws": 3, "perturbations": "float32",
                                              "perturbation_mib": pytest.approx(0.0, abs=0.1)}
    assert fixed.provenance["metric_run"]["forward_batch"] == 4
    for a, b in zip(alone.layers, fixed.layers, strict=True):
        assert a.name == b.name.removeprefix("inner.")
        for ca, cb in zip(a.candidates, b.candidates, strict=True):
            assert cb.raw_damage == pytest.approx(ca.raw_damage, rel=1e-5)


def test_gradients_and_flags_are_left_as_found():
    torch.manual_seed(5)
    model = GroupedConvNet().eval()
    before = {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}
    sgn_table(model, Calibration(torch.randn(4, 2, 4, 4), None, batch_size=4), draws=2, groups=2)
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n][0]) and p.requires_grad == before[n][1]
        assert p.grad is None


def test_options_are_checked():
    with pytest.raises(ValueError, match="^options.draws: must be a positive integer"):
        get_metric("sampled_gauss_newton", {"draws": 0})
    with pytest.raises(ValueError, match="^options.groups: at least 2"):
        get_metric("sampled_gauss_newton", {"groups": 1})
    with pytest.raises(ValueError, match="^options.output_loss"):
        get_metric("sampled_gauss_newton", {"output_loss": "l1"})


def test_a_large_perturbation_stack_kept_as_int8_codes_gives_nearly_the_same_damages(monkeypatch):
    """Models whose ΔW stack would pass DELTA_FLOAT32_BYTES keep it as int8 codes with block scales,
    coded and widened a slice at a time (blocks and slices are made smaller than one layer
    here, and the layers' sizes are not multiples of a block, so padding and several slices run)."""
    import workers.metrics.sampled_gauss_newton as sgn

    torch.manual_seed(6)
    model = GroupedConvNet().eval()
    cal = Calibration(torch.randn(6, 2, 4, 4), None, batch_size=6)
    wide = sgn_table(model, cal, draws=2, groups=3)
    monkeypatch.setattr(sgn, "DELTA_FLOAT32_BYTES", 0)
    monkeypatch.setattr(sgn, "CODE_BLOCK", 5)
    monkeypatch.setattr(sgn, "WIDEN_ELEMENTS", 7)
    monkeypatch.setattr(sgn, "CODING_ELEMENTS", 11)  # coded two blocks at a time: a short last slice too
    narrow = sgn_table(model, cal, draws=2, groups=3)
    assert narrow.provenance["metric_run"]["perturbations"] == "int8_blocks"
    for a, b in zip(wide.layers, narrow.layers, strict=True):
        for ca, cb in zip(a.candidates, b.candidates, strict=True):
            assert cb.raw_damage == pytest.approx(ca.raw_damage, rel=0.02)
            assert cb.raw_damage != ca.raw_damage  # the coded stack really was used
