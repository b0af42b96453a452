import pytest
import torch

from tests.utils.workers_factories import exact_traces, trained_mlp
from workers.data import Calibration
from workers.metrics import MetricContext, get_metric
from workers.models import find_layers
from workers.quantizers import parse_candidates


def measure(model, calibration, seed=0, **options):
    ctx = MetricContext(model, find_layers(model), calibration, [], seed)
    return get_metric("eigen", options).measure(ctx)


@pytest.mark.parametrize("labels", [True, False], ids=["cross_entropy", "label_free"])
def test_top_eigenvalue_matches_exact_hessian_block(labels):
    model, x, y = trained_mlp()
    stats = measure(model, Calibration(x, y if labels else None, batch_size=32), tolerance=1e-6, max_iterations=500)
    exact = exact_traces(model, x, y if labels else None, ["fc1.weight", "fc2.weight"])
    for stat, block in zip(stats, exact.values(), strict=True):
        eig = torch.linalg.eigvalsh(block)
        dominant = float(eig[eig.abs().argmax()])  # power iteration finds the largest magnitude
        assert stat.converged and stat.ci_halfwidth is None
        assert stat.mean == pytest.approx(dominant, rel=1e-3)


def test_stops_at_the_tolerance_or_the_cap():
    model, x, y = trained_mlp()
    loose = measure(model, Calibration(x, y), tolerance=0.1)
    tight = measure(model, Calibration(x, y), tolerance=1e-9, max_iterations=3)
    assert all(s.converged for s in loose) and all(s.samples < 100 for s in loose)
    assert all(s.samples == 3 for s in tight) and not all(s.converged for s in tight)


def test_chunked_layers_give_the_same_answer():
    model, x, y = trained_mlp()
    joint = measure(model, Calibration(x, y), max_iterations=10)
    alone = measure(model, Calibration(x, y), max_iterations=10, layer_chunk=1)
    assert [s.mean for s in joint] == pytest.approx([s.mean for s in alone], rel=1e-6)


def test_damage_is_lambda_times_perturbation():
    model, x, y = trained_mlp()
    metric = get_metric("eigen")
    stat = measure(model, Calibration(x, None))[0]
    w = model.fc1.weight.detach()
    q = parse_candidates(["int4"])[0].quantize(w)
    assert metric.damage(stat, None, w, q) == pytest.approx(stat.mean * float((q - w).double().pow(2).sum()))


@pytest.mark.parametrize("options, field", [({"tolerance": -1}, "tolerance"), ({"max_iterations": 0}, "max_iterations"),
                                            ({"layer_chunk": 0}, "layer_chunk"), ({"output_loss": "l1"}, "output_loss")])
def test_bad_options_name_the_field(options, field):
    with pytest.raises(ValueError, match=f"^options.{field}"):
        get_metric("eigen", options)
