"""input_covariance: d(l, c) equals the brute-force K-FAC quadratic form on tiny nets."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.utils.workers_factories import trained_mlp
from tests.workers.test_metrics_gauss_newton import GroupedConvNet, TinyLM
from workers.analysis import analyse
from workers.data import Calibration
from workers.metrics import MetricContext, get_metric
from workers.models import find_layers
from workers.quantizers import parse_candidates

CANDIDATES = ["int2", "int3", "int4", "fp4_e2m1"]


def measured(model, calibration, seed=0, **options):
    """{layer: {candidate: d}} and the statistics, straight from the metric."""
    layers = find_layers(model)
    candidates = parse_candidates(CANDIDATES)
    metric = get_metric("input_covariance", options)
    stats = metric.measure(MetricContext(model, layers, calibration, candidates, seed))
    return {info.name: dict(s.extra["damage"]) for (info, _), s in zip(layers, stats, strict=True)}, stats


def deltas(model):
    """{layer: {candidate: ΔW}} rounded as the analysis rounds."""
    out = {}
    for info, weight in find_layers(model):
        w = weight.detach().to(torch.float32)
        out[info.name] = {q.name: (info.quantize(q, w) - w).to(torch.float64) for q in parse_candidates(CANDIDATES)}
    return out


def layer_inputs(model, x):
    """Each Linear / Conv module's input on `x` (one forward, hooks)."""
    seen, hooks = {}, []

    def keep(name):
        def hook(module, inputs, out):
            seen.setdefault(name, inputs[0].detach())

        return hook

    for name, m in model.named_modules():
        if isinstance(m, nn.Linear | nn.Conv2d | nn.Embedding):
            hooks.append(m.register_forward_hook(keep(name)))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def output_error(module, x, dw):
    """½ Σ ‖ΔW x‖² over every position: the layer's own output change, bias-free, in float64."""
    if isinstance(module, nn.Embedding):
        return 0.5 * float(F.embedding(x, dw).pow(2).sum())
    x = x.to(torch.float64)
    if isinstance(module, nn.Conv2d):
        y = F.conv2d(x, dw, None, module.stride, module.padding, module.dilation, module.groups)
    else:
        y = x @ dw.T
    return 0.5 * float(y.pow(2).sum())


@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_weighting_none_is_the_layer_output_error(net):
    torch.manual_seed(0)
    if net == "mlp":
        model, x, _ = trained_mlp()
    else:
        model, x = GroupedConvNet().eval(), torch.randn(10, 2, 4, 4)
    got, stats = measured(model, Calibration(x, None, batch_size=4), weighting="none")
    inputs, modules = layer_inputs(model, x), dict(model.named_modules())
    for layer, per_candidate in deltas(model).items():
        for c, dw in per_candidate.items():
            want = output_error(modules[layer], inputs[layer], dw)
            assert got[layer][c] == pytest.approx(want, rel=1e-6), (layer, c)
            assert got[layer][c] > 0
    assert all(s.ci_halfwidth > 0 and math.isfinite(s.ci_halfwidth) for s in stats)


def test_weighting_none_on_embeddings_counts_tokens_and_sums_tied_uses():
    torch.manual_seed(0)
    ids = torch.randint(0, 11, (6, 5))
    for tied in (False, True):
        model = TinyLM(tied=tied).eval()
        got, _ = measured(model, Calibration(ids, None, batch_size=3, token_ids=True), weighting="none")
        inputs = layer_inputs(model, ids)
        for c, dw in deltas(model)["embed"].items():
            want = output_error(model.embed, inputs["embed"], dw)
            if tied:  # the LM head's use of the same weight adds its own output error
                want += output_error(model.head, inputs["head"], dw)
            assert got["embed"][c] == pytest.approx(want, rel=1e-6), (tied, c)


def kfac_factors(model, x, batch_size, seed, fisher_batches):
    """A = Σ x xᵀ (float64) per layer, and B = E_positions[(∂ℓ/∂y)²] / R from labels drawn the
    metric's way (same generator, same order of draws), written out by hand."""
    samples = x.shape[0]
    gen = torch.Generator().manual_seed(seed)
    torch.randperm(samples, generator=gen)  # the fold split draws first
    modules = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}
    squares = {n: 0.0 for n in modules}
    positions = dict.fromkeys(modules, 0)
    for b in range(fisher_batches):
        xb = x[b * batch_size : (b + 1) * batch_size]
        outs = {}

        def keep(name):
            def hook(module, inputs, out):
                outs.setdefault(name, out)

            return hook

        hooks = [m.register_forward_hook(keep(n)) for n, m in modules.items()]
        with torch.enable_grad():
            logits = model(xb)
        for h in hooks:
            h.remove()
        probs = torch.softmax(logits.detach(), dim=-1).to(torch.float64)
        drawn = torch.multinomial(probs, 1, generator=gen).squeeze(1)
        names = list(outs)
        grads = torch.autograd.grad(F.cross_entropy(logits, drawn, reduction="sum"), [outs[n] for n in names])
        for n, g in zip(names, grads, strict=True):
            g = g.to(torch.float64)
            if g.dim() == 4:  # conv: (N, C, H, W) → positions × channels
                g = g.permute(0, 2, 3, 1).reshape(-1, g.shape[1])
            squares[n] = squares[n] + g.pow(2).sum(dim=0)
            positions[n] += g.shape[0]
    rows = samples
    inputs = layer_inputs(model, x)
    factors = {}
    for n, m in modules.items():
        xi = inputs[n].to(torch.float64)
        if isinstance(m, nn.Conv2d):
            p = F.unfold(xi, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)
            k = p.shape[1] // m.groups
            p = p.reshape(p.shape[0], m.groups, k, -1).permute(1, 0, 3, 2).reshape(m.groups, -1, k)
            a = p.transpose(1, 2) @ p  # (groups, k, k)
        else:
            a = (xi.T @ xi).unsqueeze(0)
        factors[n] = (a, squares[n] / positions[n] / rows)
    return factors


@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_fisher_weighting_is_the_kfac_quadratic_form(net):
    torch.manual_seed(1)
    if net == "mlp":
        model, x, _ = trained_mlp()
        x = x[:24]
    else:
        model, x = GroupedConvNet().eval(), torch.randn(12, 2, 4, 4)
    batch_size, seed, fisher_batches = 4, 3, 2
    got, _ = measured(model, Calibration(x, None, batch_size=batch_size), seed=seed, fisher_batches=fisher_batches)
    for layer, (a, b) in kfac_factors(model, x, batch_size, seed, fisher_batches).items():
        groups = a.shape[0]
        for c, dw in deltas(model)[layer].items():
            rows = dw.reshape(groups, dw.shape[0] // groups, -1)  # (groups, out/groups, k)
            bg = b.reshape(groups, -1)
            want = 0.0
            for g in range(groups):  # ½ vec(ΔW)ᵀ (diag B ⊗ A) vec(ΔW) with the explicit Kronecker matrix
                kron = torch.kron(torch.diag(bg[g]), a[g])
                v = rows[g].reshape(-1)
                want += 0.5 * float(v @ kron @ v)
            assert got[layer][c] == pytest.approx(want, rel=1e-6), (layer, c)
            assert got[layer][c] >= 0


def test_table_ci_and_seed():
    model, x, _ = trained_mlp()
    cal = Calibration(x, None, batch_size=16)
    run = lambda seed: analyse(model, cal, parse_candidates(CANDIDATES), get_metric("input_covariance"), seed=seed)  # noqa: E731
    a, b = run(0), run(0)
    assert a.to_dict()["layers"] == b.to_dict()["layers"]
    assert a.metric == "input_covariance" and a.loss == "kl_label_free"
    for row in a.layers:
        assert row.ci_halfwidth > 0 and row.samples == 8
        assert all(c.damage >= 0 for c in row.candidates)
        assert row.candidate("int2").damage >= row.candidate("int4").damage


def test_bad_options_name_the_field():
    with pytest.raises(ValueError, match="options.weighting"):
        get_metric("input_covariance", {"weighting": "hessian"})
    with pytest.raises(ValueError, match="options.folds"):
        get_metric("input_covariance", {"folds": 1})


def hf_lm(kind, tmp_path, hidden=16):
    from tests.utils.hf_factories import save_tiny
    from workers.models import load_model

    return load_model({"format": "hf", "path": save_tiny(kind, tmp_path / kind, hidden=hidden)})


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("weighting", ["none", "fisher"])
def test_block_by_block_pass_gives_the_whole_model_table(tmp_path, kind, weighting):
    """Streaming the blocks changes where the statistics live, not what they sum."""
    model = hf_lm(kind, tmp_path)
    ids = torch.randint(4, 30, (12, 10), generator=torch.Generator().manual_seed(1))
    cal = Calibration(ids, None, batch_size=4, token_ids=True)
    run = lambda mode: analyse(model, cal, parse_candidates(CANDIDATES),  # noqa: E731
                               get_metric("input_covariance", {"streaming": mode, "weighting": weighting}), seed=3)
    whole, streamed = run("whole"), run("blocks")
    assert whole.provenance["metric_run"]["input_statistics"] == "whole"
    assert streamed.provenance["metric_run"]["input_statistics"] == "blocks"
    assert streamed.provenance["metric_run"]["blocks"] == 2
    assert streamed.provenance["metric_run"]["resident_statistics_mib"] < whole.provenance["metric_run"]["statistics_mib"]
    for a, b in zip(whole.layers, streamed.layers, strict=True):
        assert a.name == b.name
        for ca, cb in zip(a.candidates, b.candidates, strict=True):
            assert cb.damage == pytest.approx(ca.damage, rel=1e-9, abs=1e-30), (a.name, ca.name)
            assert cb.damage > 0


def test_projections_reading_one_input_share_one_statistic(tmp_path):
    """q/k/v (and gate/up) read the same normalised hidden state: one A among them, same damages."""
    from workers.metrics.input_covariance import _share_inputs, _uses

    model = hf_lm("llama", tmp_path)
    ids = torch.randint(4, 30, (4, 10), generator=torch.Generator().manual_seed(1))
    cal = Calibration(ids, None, batch_size=4, token_ids=True)
    uses = {info.name: _uses(model, info, w)[0] for info, w in find_layers(model)}
    with torch.no_grad():
        _share_inputs(model, cal, list(uses.values()))
    attn = "model.layers.0.self_attn."
    assert uses[attn + "q_proj"].stat is uses[attn + "k_proj"].stat is uses[attn + "v_proj"].stat
    assert uses[attn + "o_proj"].stat is not uses[attn + "q_proj"].stat
    mlp = "model.layers.0.mlp."
    assert uses[mlp + "gate_proj"].stat is uses[mlp + "up_proj"].stat
    assert uses[mlp + "down_proj"].stat is not uses[mlp + "up_proj"].stat
    # and the shared statistic gives each projection its own exact output error
    x = layer_inputs(model, ids)
    got, _ = measured(model, cal, weighting="none", folds=2)
    d = deltas(model)
    for name in (attn + "q_proj", attn + "k_proj", mlp + "up_proj"):
        module = dict(model.named_modules())[name]
        inputs = x[name]
        want = output_error(module, inputs.reshape(-1, inputs.shape[-1]), d[name]["int3"])
        assert got[name]["int3"] == pytest.approx(want, rel=1e-5)


def test_a_model_without_repeated_blocks_says_why_it_ran_whole():
    model, x, _ = trained_mlp()
    cal = Calibration(x, None, batch_size=16)
    table = analyse(model, cal, parse_candidates(CANDIDATES), get_metric("input_covariance", {"streaming": "blocks"}),
                    seed=0)
    run = table.provenance["metric_run"]
    assert run["input_statistics"] == "whole"
    assert "no repeated blocks" in run["reason"]


def test_bad_streaming_option_names_the_field():
    with pytest.raises(ValueError, match="options.streaming"):
        get_metric("input_covariance", {"streaming": "sometimes"})


class StridedConvNet(nn.Module):
    """Strided, dilated, depthwise and grouped convolutions (EfficientNet's kinds), then a head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.depthwise = nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4)
        self.grouped = nn.Conv2d(4, 6, 1, groups=2)
        self.head = nn.Linear(6, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.depthwise(x))
        x = torch.relu(self.grouped(x))
        return self.head(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("weighting", ["none", "fisher"])
def test_an_exported_graph_gives_the_eager_models_damages(weighting):
    """A .pt2 unlifts to a flat GraphModule with no Conv2d modules: its aten calls are captured instead."""
    torch.manual_seed(0)
    eager = StridedConvNet().eval()
    x = torch.randn(12, 3, 8, 8)
    graph = torch.export.export(eager, (x[:4],), dynamic_shapes=({0: torch.export.Dim("batch")},)).module()
    assert isinstance(graph, torch.fx.GraphModule)
    cal = Calibration(x, None, batch_size=4)
    want, _ = measured(eager, cal, weighting=weighting, folds=3)
    got, _ = measured(graph, cal, weighting=weighting, folds=3)
    assert sorted(got) == sorted(want)
    for layer in want:
        for c in CANDIDATES:
            assert got[layer][c] == pytest.approx(want[layer][c], rel=1e-5), (layer, c)
            assert got[layer][c] > 0
    assert "forward" not in graph.__dict__  # the graph's own forward is back


def test_an_exported_lm_with_a_tied_head_gives_the_eager_models_damages():
    torch.manual_seed(0)
    eager = TinyLM(tied=True).eval()
    ids = torch.randint(0, 11, (8, 6), generator=torch.Generator().manual_seed(2))
    graph = torch.export.export(eager, (ids[:4],), dynamic_shapes=({0: torch.export.Dim("batch")},)).module()
    cal = Calibration(ids, None, batch_size=4, token_ids=True)
    want, _ = measured(eager, cal, weighting="none", folds=2)
    got, _ = measured(graph, cal, weighting="none", folds=2)
    # the graph names the tied weight after its first get_attr ("head"); it is one layer either way
    got["embed"] = got.pop("head")
    assert sorted(got) == sorted(want)
    for layer in want:
        for c in CANDIDATES:
            assert got[layer][c] == pytest.approx(want[layer][c], rel=1e-5), (layer, c)
