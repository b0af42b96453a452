"""Hutchinson beyond the basics in test_hutchinson.py: conv layers, shrinking probes, negative traces."""

import pytest
import torch

from tests.utils.workers_factories import CNN, exact_traces, trained_mlp
from workers.architectures import build_model
from workers.data import Calibration
from workers.metrics import MetricContext, get_metric
from workers.metrics._common import relative
from workers.models import find_layers
from workers.quantizers import parse_candidates


def measure(model, calibration, seed=0, **options):
    return get_metric("hutchinson", options).measure(MetricContext(model, find_layers(model), calibration, [], seed))


def tiny_cnn():
    torch.manual_seed(0)
    model = build_model("cnn", CNN)
    x = torch.randn(48, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    return model, x


def test_conv_traces_match_the_exact_hessian():
    model, x = tiny_cnn()
    stats = measure(model, Calibration(x, None), tolerance=0.05, max_probes=4096, probe_batch=64)
    exact = exact_traces(model, x, None, ["conv1.weight", "conv2.weight", "head.weight"])
    for stat, block in zip(stats, exact.values(), strict=True):
        truth = float(torch.trace(block))
        assert stat.converged and abs(stat.mean - truth) <= stat.ci_halfwidth, (stat.mean, truth, stat.ci_halfwidth)


def test_shrinking_needs_fewer_probes_and_stays_unbiased():
    """Dropping converged layers removes their cross terms from the others' samples."""
    model, x = tiny_cnn()
    shrunk = measure(model, Calibration(x, None), probe_batch=8)
    joint = measure(model, Calibration(x, None), probe_batch=8, shrink=False)
    assert max(s.samples for s in shrunk) < max(s.samples for s in joint)
    assert len({s.samples for s in joint}) == 1  # without shrinking every layer gets every probe
    exact = exact_traces(model, x, None, ["conv1.weight", "conv2.weight", "head.weight"])
    for stat, block in zip(shrunk, exact.values(), strict=True):
        assert stat.converged and stat.ci_halfwidth <= 0.1 * abs(stat.mean)
        assert abs(stat.mean - float(torch.trace(block))) <= 1.5 * stat.ci_halfwidth


def test_same_seed_same_probes_whatever_shrink_does():
    model, x, y = trained_mlp()
    a = measure(model, Calibration(x, y), min_probes=8, max_probes=8, probe_batch=8)
    b = measure(model, Calibration(x, y), min_probes=8, max_probes=8, probe_batch=8, shrink=False)
    assert [s.mean for s in a] == [s.mean for s in b]


def test_negative_trace_converges_on_its_absolute_value():
    """Wrong labels put the trained MLP far from a minimum: fc1's trace is about −20. A stopping
    rule dividing by the signed mean would never (or instantly) stop; |mean| converges normally."""
    model, x, y = trained_mlp()
    wrong = (y + 1) % 4
    stats = measure(model, Calibration(x, wrong))
    truth = float(torch.trace(exact_traces(model, x, wrong, ["fc1.weight"])["fc1.weight"]))
    assert truth < -10 and stats[0].mean < 0 and stats[0].converged
    assert stats[0].samples < 1024 and abs(stats[0].mean - truth) <= stats[0].ci_halfwidth
    w = model.fc1.weight.detach()
    q = parse_candidates(["int4"])[0].quantize(w)
    assert get_metric("hutchinson").damage(stats[0], None, w, q) == 0.0  # no second-order harm predicted
    assert relative(-2.0, 0.1) == pytest.approx(0.05)
