"""gauss_newton: d(l, c) equals ½ ΔWᵀ G ΔW from the explicit Gauss-Newton matrix on tiny nets."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp

from tests.utils.workers_factories import trained_mlp
from workers.analysis import analyse
from workers.data import Calibration
from workers.metrics import get_metric
from workers.metrics.gauss_newton import reverse_jvp
from workers.models import find_layers
from workers.quantizers import parse_candidates

CANDIDATES = ["int2", "int3", "int4", "fp4_e2m1"]


class GroupedConvNet(nn.Module):
    """A depthwise and a grouped convolution between two ordinary layers."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.grouped = nn.Conv2d(4, 6, 1, groups=2)
        self.head = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        x = torch.tanh(self.stem(x))
        x = torch.tanh(self.depthwise(x))
        x = torch.tanh(self.grouped(x))
        return self.head(x.flatten(1))


class TinyLM(nn.Module):
    """Token embedding → tanh → linear → LM head; `tied` shares the embedding with the head."""

    def __init__(self, vocab=11, width=4, tied=True):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.mix = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab, bias=False)
        if tied:
            self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(torch.tanh(self.mix(torch.tanh(self.embed(ids)))))


def tied_forward(params, ids):
    """TinyLM written out by hand, the one weight entering twice: independent of module tying."""
    w = params["embed.weight"]
    hidden = torch.tanh(F.linear(torch.tanh(F.embedding(ids, w)), params["mix.weight"], params["mix.bias"]))
    return F.linear(hidden, w)


def brute_force(model, x, layer, delta, kind, fn=None):
    """½ ΔWᵀ G ΔW, G = (1/R) Σ_r J_rᵀ H_r J_r from the full Jacobian (float64)."""
    params = {k: v.detach().to(torch.float64) for k, v in model.named_parameters()}
    x = x if not x.dtype.is_floating_point else x.to(torch.float64)
    shape = params[layer].shape

    def out(flat):
        p = {**params, layer: flat.reshape(shape)}
        return fn(p, x) if fn is not None else functional_call(model.to(torch.float64), p, (x,))

    z = out(params[layer].reshape(-1)).detach()
    jac = torch.autograd.functional.jacobian(out, params[layer].reshape(-1))  # (*out, n)
    model.to(torch.float32)
    k = z.shape[-1]
    z, jac = z.reshape(-1, k), jac.reshape(-1, k, jac.shape[-1])
    if kind == "mse":
        h = torch.eye(k, dtype=torch.float64).expand(z.shape[0], k, k)
    else:
        p = torch.softmax(z, dim=-1)
        h = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    g = torch.einsum("rkn,rkj,rjm->nm", jac, h, jac) / z.shape[0]
    d = delta.reshape(-1).to(torch.float64)
    return 0.5 * float(d @ g @ d)


def gn_table(model, calibration, candidates=CANDIDATES, **options):
    return analyse(model, calibration, parse_candidates(candidates), get_metric("gauss_newton", options))


def check_against_brute_force(model, calibration, kind, fn=None, names=None):
    t = gn_table(model, calibration, output_loss=kind, form="quadratic")
    layers = find_layers(model)
    assert layers, "no layers"
    param_names = {id(p): n for n, p in model.named_parameters()}
    for info, weight in layers:
        if names is not None and info.name not in names:
            continue
        row = t.layer(info.name)
        for q in parse_candidates(CANDIDATES):
            delta = info.quantize(q, weight) - weight.detach()
            expected = brute_force(model, calibration.inputs, param_names[id(weight)], delta, kind, fn)
            got = row.candidate(q.name).raw_damage
            assert expected > 0
            assert got == pytest.approx(expected, rel=2e-4), (info.name, q.name)
    return t


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_depthwise_and_grouped_convolutions_match_the_explicit_matrix(kind):
    torch.manual_seed(0)
    model = GroupedConvNet().eval()
    x = torch.randn(12, 2, 4, 4)
    t = check_against_brute_force(model, Calibration(x, None, batch_size=5), kind)
    assert [r.name for r in t.layers] == ["stem", "depthwise", "grouped", "head"]


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_embedding_in_a_sequence_model_matches_the_explicit_matrix(kind):
    torch.manual_seed(1)
    model = TinyLM(tied=False).eval()
    ids = torch.randint(0, 11, (6, 5))
    check_against_brute_force(model, Calibration(ids, None, batch_size=4, token_ids=True), kind)


def test_tied_weight_is_perturbed_in_both_uses():
    torch.manual_seed(2)
    model = TinyLM(tied=True).eval()
    ids = torch.randint(0, 11, (6, 5))
    calibration = Calibration(ids, None, batch_size=6, token_ids=True)
    t = check_against_brute_force(model, calibration, "kl", fn=tied_forward, names={"embed"})
    assert t.layer("embed").shared_with == ["head"]
    # Perturbing only the embedding use (head untied) gives a different, smaller-scope number.
    untied = TinyLM(tied=False).eval()
    untied.load_state_dict({**model.state_dict(), "head.weight": model.embed.weight.detach().clone()})
    alone = gn_table(untied, calibration).layer("embed").candidate("int2").raw_damage
    assert alone != pytest.approx(t.layer("embed").candidate("int2").raw_damage, rel=1e-3)


def test_cross_entropy_targets_give_the_same_gauss_newton_matrix_as_kl():
    """The Hessian of cross-entropy in the logits is diag p − ppᵀ whatever the target."""
    model, x, y = trained_mlp()
    with_targets = gn_table(model, Calibration(x, y, batch_size=16))
    label_free = gn_table(model, Calibration(x, None, batch_size=16))
    assert with_targets.loss == "cross_entropy"
    for a, b in zip(with_targets.layers, label_free.layers, strict=True):
        for ca, cb in zip(a.candidates, b.candidates, strict=True):
            assert ca.raw_damage == pytest.approx(cb.raw_damage, rel=1e-9)


def test_confidence_interval_is_over_groups_of_samples():
    model, x, _ = trained_mlp()
    t = gn_table(model, Calibration(x, None, batch_size=64), groups=4)
    parts = [gn_table(model, Calibration(x[i : i + 16], None)).layer("fc1").candidate("int3").raw_damage
             for i in range(0, 64, 16)]
    mean = sum(parts) / 4
    half = 1.96 * math.sqrt(sum((p - mean) ** 2 for p in parts) / 3 / 4)
    row = t.layer("fc1")
    assert row.candidate("int3").raw_damage == pytest.approx(mean, rel=1e-9)
    worst = max(row.candidates, key=lambda c: c.raw_damage)
    assert worst.candidate == "int2" and row.mean == worst.raw_damage and row.samples == 4
    parts2 = [gn_table(model, Calibration(x[i : i + 16], None)).layer("fc1").candidate("int2").raw_damage
              for i in range(0, 64, 16)]
    m2 = sum(parts2) / 4
    assert row.ci_halfwidth == pytest.approx(1.96 * math.sqrt(sum((p - m2) ** 2 for p in parts2) / 12), rel=1e-9)
    # each candidate carries its own half-width (int3's, not int2's relative width applied to it);
    # alone on its ladder, so the monotone repair of the interval's ends does not bind; the lower
    # end is clamped at 0 (a damage is never negative), so the half-spread is taken from there
    assert half > 0
    alone = gn_table(model, Calibration(x, None, batch_size=64), ["int3"], groups=4).layer("fc1")
    expected = (mean + half - max(0.0, mean - half)) / 2
    assert alone.candidate("int3").damage_ci == pytest.approx(expected, rel=1e-6)
    assert half != pytest.approx(row.ci_halfwidth / row.mean * mean, rel=1e-2)


def test_close_to_the_measured_loss_change_for_small_perturbations():
    """Second order is exact in the limit: at int8 the prediction is within 5% of loss_delta."""
    model, x, _ = trained_mlp()
    cal = Calibration(x, None, batch_size=64)
    gn = gn_table(model, cal, ["int8"])
    measured = analyse(model, cal, parse_candidates(["int8"]), get_metric("loss_delta"))
    for a, b in zip(gn.layers, measured.layers, strict=True):
        assert a.candidate("int8").raw_damage == pytest.approx(b.candidate("int8").raw_damage, rel=0.05)


def test_reverse_mode_fallback_gives_the_forward_mode_numbers():
    torch.manual_seed(3)
    model = GroupedConvNet().eval()
    x = torch.randn(3, 2, 4, 4)
    w = model.depthwise.weight.detach()

    def f(weight):
        return functional_call(model, {"depthwise.weight": weight}, (x,))

    tangents = torch.randn(2, *w.shape)
    forward_mode = torch.stack([jvp(f, (w,), (t,))[1] for t in tangents])
    assert torch.allclose(reverse_jvp(f, w, tangents), forward_mode, rtol=1e-5, atol=1e-6)


def test_options_are_checked():
    with pytest.raises(ValueError, match="^options.groups: at least 2"):
        get_metric("gauss_newton", {"groups": 1})
    with pytest.raises(ValueError, match="^options.candidate_batch: must be a positive integer"):
        get_metric("gauss_newton", {"candidate_batch": 0})
    with pytest.raises(ValueError, match="^options.output_loss: must be one of kl, mse"):
        get_metric("gauss_newton", {"output_loss": "l1"})


def test_linearised_form_is_the_output_loss_of_the_linearised_change():
    """For a linear model the network is its own linearisation: the form equals measured loss_delta."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 5)).eval()
    cal = Calibration(torch.randn(20, 6) * 3, None, batch_size=8)
    lin = gn_table(model, cal, form="linearised")
    quad = gn_table(model, cal)
    measured = analyse(model, cal, parse_candidates(CANDIDATES), get_metric("loss_delta"))
    for q in CANDIDATES:
        got = lin.layers[0].candidate(q).raw_damage
        assert got == pytest.approx(measured.layers[0].candidate(q).raw_damage, rel=1e-4)
        assert got != pytest.approx(quad.layers[0].candidate(q).raw_damage, rel=1e-3)


class Attention(nn.Module):
    """One self-attention block through F.scaled_dot_product_attention (fused kernels on CPU)."""

    def __init__(self, width=8):
        super().__init__()
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, 5)

    def forward(self, x):
        b, t, width = x.shape
        q, k, v = (h.reshape(b, t, 2, width // 2).transpose(1, 2) for h in self.qkv(x).chunk(3, dim=-1))
        mixed = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (batch, heads, time, width / heads)
        return self.out(mixed.transpose(1, 2).reshape(b, t, width))


def test_fused_attention_runs_through_the_math_kernel_and_matches_the_explicit_matrix():
    torch.manual_seed(5)
    model = Attention().eval()
    x = torch.randn(4, 6, 8)
    check_against_brute_force(model, Calibration(x, None, batch_size=4), "kl")
