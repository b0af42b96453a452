import math

import pytest
import torch

from tests.utils.workers_factories import exact_traces, trained_mlp
from workers.analysis import analyse
from workers.data import Calibration
from workers.errors import DatasetError
from workers.metrics import MetricContext, get_metric
from workers.metrics._loss import CalibrationLoss
from workers.models import find_layers
from workers.quantizers import parse_candidates


def measure(model, calibration, seed=0, **options):
    metric = get_metric("hutchinson", options)
    ctx = MetricContext(model, find_layers(model), calibration, [], seed)
    return metric.measure(ctx)


@pytest.mark.parametrize("labels", [True, False], ids=["cross_entropy", "label_free"])
def test_trace_matches_exact_hessian_within_stated_ci(labels):
    model, x, y = trained_mlp()
    calibration = Calibration(x, y if labels else None, batch_size=32)
    stats = measure(model, calibration, tolerance=0.1, max_probes=4000, probe_batch=64)
    exact = exact_traces(model, x, y if labels else None, ["fc1.weight", "fc2.weight"])
    for stat, block in zip(stats, exact.values(), strict=True):
        truth = float(torch.trace(block))
        assert stat.converged and stat.ci_halfwidth <= 0.1 * abs(stat.mean)
        assert abs(stat.mean - truth) <= stat.ci_halfwidth, (stat.mean, truth, stat.ci_halfwidth)


def test_label_free_loss_has_zero_gradient_and_psd_hessian():
    model, x, _ = trained_mlp()
    loss = CalibrationLoss(model, Calibration(x, None, batch_size=16))
    total = sum(loss.batch_losses())
    grads = torch.autograd.grad(total, [p for _, p in find_layers(model)])
    assert float(total.detach()) == pytest.approx(0.0, abs=1e-7)
    assert all(float(g.abs().max()) < 1e-6 for g in grads)
    for block in exact_traces(model, x, None, ["fc1.weight", "fc2.weight"]).values():
        assert float(torch.linalg.eigvalsh(block).min()) > -1e-9
    stats = measure(model, Calibration(x, None), tolerance=0.1)
    assert all(s.mean > 0 for s in stats)


def test_batching_only_changes_rounding():
    """Hv is summed over calibration batches, so the batch size must not change the estimate."""
    model, x, y = trained_mlp()
    one = measure(model, Calibration(x, y, batch_size=64), min_probes=8, max_probes=8)
    many = measure(model, Calibration(x, y, batch_size=10), min_probes=8, max_probes=8)
    for a, b in zip(one, many, strict=True):
        assert a.mean == pytest.approx(b.mean, rel=1e-4)


def test_seeded_and_reproducible():
    model, x, y = trained_mlp()
    runs = [measure(model, Calibration(x, y), seed=seed, min_probes=8, max_probes=8) for seed in (5, 5, 6)]
    assert [s.mean for s in runs[0]] == [s.mean for s in runs[1]]
    assert [s.mean for s in runs[0]] != [s.mean for s in runs[2]]


def test_stops_adaptively_and_flags_the_cap():
    model, x, y = trained_mlp()
    loose = measure(model, Calibration(x, y), tolerance=0.5, min_probes=4, probe_batch=4)
    assert all(s.converged for s in loose) and loose[0].samples < 1024 // 4
    capped = measure(model, Calibration(x, y), tolerance=1e-4, min_probes=4, max_probes=8, probe_batch=4)
    assert capped[0].samples == 8 and not all(s.converged for s in capped)


def test_scaled_up_layer_scores_more_sensitive():
    model, x, _ = trained_mlp()
    int4 = parse_candidates(["int4"])
    metric = get_metric("hutchinson", {"tolerance": 0.1})
    before = analyse(model, Calibration(x), int4, metric).layer("fc1").candidate("int4").damage
    with torch.no_grad():
        model.fc1.weight.mul_(4.0)
    after = analyse(model, Calibration(x), int4, metric).layer("fc1").candidate("int4").damage
    assert after > 2 * before


def test_needs_calibration_data():
    model, _, _ = trained_mlp(steps=0)
    with pytest.raises(DatasetError, match="^dataset: the hutchinson metric needs calibration data"):
        measure(model, None)


def test_restores_requires_grad_and_weights():
    model, x, y = trained_mlp(steps=0)
    model.fc1.bias.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    measure(model, Calibration(x, y), min_probes=4, max_probes=4)
    assert not model.fc1.bias.requires_grad and model.fc2.weight.requires_grad
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "options, field",
    [({"tolerance": 0}, "tolerance"), ({"min_probes": 1}, "min_probes"), ({"max_probes": 2, "min_probes": 4}, "max_probes"),
     ({"output_loss": "l1"}, "output_loss"), ({"probes": 3}, "probes")],
)
def test_bad_options_name_the_field(options, field):
    with pytest.raises(ValueError, match=f"^options.{field}"):
        get_metric("hutchinson", options)


def test_unknown_metric_lists_valid_names():
    with pytest.raises(ValueError, match="hutchinson"):
        get_metric("hessian")
