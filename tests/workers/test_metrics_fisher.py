import pytest
import torch
import torch.nn.functional as F

from tests.utils.workers_factories import CNN, exact_traces, trained_mlp
from workers.architectures import build_model
from workers.data import Calibration
from workers.metrics import MetricContext, get_metric
from workers.metrics import fisher as fisher_module
from workers.models import find_layers
from workers.quantizers import parse_candidates


def measure(model, calibration, seed=0, **options):
    ctx = MetricContext(model, find_layers(model), calibration, [], seed)
    return get_metric("fisher", options).measure(ctx)


def direct_empirical_fisher(model, x, y):
    """Independent reference: one plain backward per sample, squared and averaged."""
    params = [model.fc1.weight, model.fc2.weight]
    total = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    for s in range(x.shape[0]):
        loss = F.cross_entropy(model(x[s : s + 1]), y[s : s + 1])
        for acc, g in zip(total, torch.autograd.grad(loss, params), strict=True):
            acc += g.double() ** 2
    return [t / x.shape[0] for t in total]


def test_empirical_fisher_matches_a_direct_computation():
    model, x, y = trained_mlp(steps=20)
    stats = measure(model, Calibration(x, y, batch_size=24), sample_chunk=10)
    for stat, ref in zip(stats, direct_empirical_fisher(model, x, y), strict=True):
        torch.testing.assert_close(stat.extra["diag"].double(), ref, rtol=1e-4, atol=1e-9)
        assert stat.mean == pytest.approx(float(ref.sum()), rel=1e-5) and stat.ci_halfwidth is None


def test_label_free_fisher_is_the_exact_hessian_diagonal():
    """Label-free, the Hessian at θ₀ is the Gauss-Newton matrix, which the exact Fisher equals."""
    model, x, _ = trained_mlp()
    stats = measure(model, Calibration(x, None, batch_size=40))
    exact = exact_traces(model, x, None, ["fc1.weight", "fc2.weight"])
    for stat, block in zip(stats, exact.values(), strict=True):
        torch.testing.assert_close(stat.extra["diag"].double().flatten(), torch.diagonal(block), rtol=1e-4, atol=1e-8)
        assert stat.mean == pytest.approx(float(torch.trace(block)), rel=1e-4)


def test_drawn_pseudo_labels_are_unbiased_within_their_ci():
    model, x, _ = trained_mlp(steps=5)  # a not-yet-confident model: the draws are informative
    x = x.repeat(8, 1)
    stats = measure(model, Calibration(x, None), exact_outputs=0)
    exact = measure(model, Calibration(x, None))
    for s, e in zip(stats, exact, strict=True):
        assert s.samples == x.shape[0] and s.ci_halfwidth > 0
        assert abs(s.mean - e.mean) <= 1.5 * s.ci_halfwidth, (s.mean, e.mean, s.ci_halfwidth)


def test_closed_form_vmap_and_loop_agree(monkeypatch):
    """Three ways to the same per-sample squares: the Linear closed form, vmap, a plain loop."""
    model, x, y = trained_mlp(steps=20)
    for labels in (y, None):
        closed = measure(model, Calibration(x, labels, batch_size=40))
        with monkeypatch.context() as patch:
            patch.setattr(fisher_module, "_plain_linears", lambda *args: {})
            vmapped = measure(model, Calibration(x, labels, batch_size=40), sample_chunk=16)
            patch.setattr(fisher_module._PerSampleGrads, "_vmapped", refuse)
            looped = measure(model, Calibration(x, labels, batch_size=40))
        for a, b, c in zip(closed, vmapped, looped, strict=True):
            torch.testing.assert_close(a.extra["diag"], b.extra["diag"], rtol=1e-5, atol=1e-10)
            torch.testing.assert_close(b.extra["diag"], c.extra["diag"], rtol=1e-5, atol=1e-10)
    drawn = [measure(model, Calibration(x, None), exact_outputs=0) for _ in range(2)]
    monkeypatch.setattr(fisher_module, "_plain_linears", lambda *args: {})
    drawn.append(measure(model, Calibration(x, None), exact_outputs=0))
    assert drawn[0][0].ci_halfwidth == pytest.approx(drawn[2][0].ci_halfwidth, rel=1e-5)


def refuse(*args, **kwargs):
    raise RuntimeError("no batching rule")


def test_cnn_mixes_closed_form_and_vmap_exactly():
    torch.manual_seed(0)
    model = build_model("cnn", CNN)
    x = torch.randn(24, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    params = [p for _, p in find_layers(model)]
    assert list(fisher_module._plain_linears(model, params, x[:3])) == [2]  # the head only
    stats = measure(model, Calibration(x, None, batch_size=10))
    exact = exact_traces(model, x, None, ["conv1.weight", "conv2.weight", "head.weight"])
    for stat, block in zip(stats, exact.values(), strict=True):
        torch.testing.assert_close(stat.extra["diag"].double().flatten(), torch.diagonal(block), rtol=1e-4, atol=1e-8)


def test_damage_is_half_fisher_weighted_perturbation():
    model, x, y = trained_mlp()
    stat = measure(model, Calibration(x, None))[1]
    w = model.fc2.weight.detach()
    q = parse_candidates(["int3"])[0].quantize(w)
    expected = 0.5 * float((stat.extra["diag"].double() * (q - w).double() ** 2).sum())
    assert get_metric("fisher").damage(stat, None, w, q) == pytest.approx(expected)


def test_bad_target_is_explained():
    model, x, y = trained_mlp(steps=0)
    from workers.errors import AnalysisError

    with pytest.raises(AnalysisError, match="^targets: class index 9"):
        measure(model, Calibration(x, torch.full_like(y, 9)))


class _Pooled(torch.nn.Module):
    """A Linear on (samples, positions, features): no closed form, so vmap must take it."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 5)
        self.head = torch.nn.Linear(5, 4)

    def forward(self, x):
        return self.head(torch.tanh(self.proj(x)).mean(dim=1))


def test_sequence_linear_uses_per_sample_gradients():
    torch.manual_seed(0)
    model = _Pooled().eval()
    x = torch.randn(12, 6, 3, generator=torch.Generator().manual_seed(2))
    y = torch.arange(12) % 4
    params = [p for _, p in find_layers(model)]
    assert list(fisher_module._plain_linears(model, params, x[:3])) == [1]
    stats = measure(model, Calibration(x, y, batch_size=5))
    for stat, p in zip(stats, params, strict=True):
        ref = torch.zeros_like(p, dtype=torch.float64)
        for s in range(12):
            (g,) = torch.autograd.grad(F.cross_entropy(model(x[s : s + 1]), y[s : s + 1]), [p])
            ref += g.double() ** 2
        torch.testing.assert_close(stat.extra["diag"].double(), ref / 12, rtol=1e-4, atol=1e-9)
