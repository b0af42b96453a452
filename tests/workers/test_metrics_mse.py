import pytest
import torch

from tests.utils.workers_factories import MLP, save_model, trained_mlp
from workers.analysis import analyse
from workers.jobs import run_analysis_job
from workers.metrics import MetricContext, get_metric
from workers.models import find_layers
from workers.quantizers import parse_candidates

INT4 = parse_candidates(["int4"])


def test_data_free_through_the_job(tmp_path):
    model, _, _ = trained_mlp()
    path = save_model(tmp_path / "m.safetensors", model)
    result = run_analysis_job(
        {"model": {"format": "safetensors", "path": path, "architecture": "mlp", "hyperparams": MLP},
         "dataset_path": None, "metric": "mse", "candidates": ["int4", "int8"]}
    )
    assert result["metric"] == "mse" and result["loss"] == "none" and result["calibration_samples"] == 0
    assert all(c["damage"] > 0 for row in result["layers"] for c in row["candidates"])


@pytest.mark.parametrize("normalize", ["tensor", "model", "channel"])
def test_damage_formulae(normalize):
    model, _, _ = trained_mlp()
    table = analyse(model, None, INT4, get_metric("mse", {"normalize": normalize}))
    weights = [model.fc1.weight.detach().double(), model.fc2.weight.detach().double()]
    model_ms = sum(float(w.pow(2).sum()) for w in weights) / sum(w.numel() for w in weights)
    for row, w in zip(table.layers, weights, strict=True):
        delta = INT4[0].quantize(w.float()).double() - w
        expected = {
            "tensor": float(delta.pow(2).sum() / w.pow(2).sum()),
            "model": float(delta.pow(2).sum()) / model_ms,
            "channel": float((delta.pow(2).sum(1) / w.pow(2).sum(1)).mean()),
        }[normalize]
        assert row.candidate("int4").raw_damage == pytest.approx(expected, rel=1e-9)
        assert row.mean == pytest.approx(float(w.pow(2).mean()), rel=1e-9)
        assert row.ci_halfwidth is None and row.samples is None


def test_scale_behaviour_of_each_normalisation():
    """"tensor" and "channel" ignore the scale of a layer on purpose; "model" does not."""
    model, _, _ = trained_mlp()

    def damage(normalize):
        table = analyse(model, None, INT4, get_metric("mse", {"normalize": normalize}))
        return table.layer("fc1").candidate("int4").raw_damage

    before = {n: damage(n) for n in ("tensor", "channel", "model")}
    with torch.no_grad():
        model.fc1.weight.mul_(4.0)
    after = {n: damage(n) for n in ("tensor", "channel", "model")}
    assert after["tensor"] == pytest.approx(before["tensor"], rel=1e-3)
    assert after["channel"] == pytest.approx(before["channel"], rel=1e-3)
    assert after["model"] > 1.5 * before["model"]


def test_zero_layer_has_no_damage():
    model, _, _ = trained_mlp(steps=0)
    with torch.no_grad():
        model.fc2.weight.zero_()
    for normalize in ("tensor", "model", "channel"):
        table = analyse(model, None, INT4, get_metric("mse", {"normalize": normalize}))
        assert table.layer("fc2").candidate("int4").raw_damage == 0.0


def test_bad_normalisation_names_the_field():
    with pytest.raises(ValueError, match="^options.normalize: must be one of tensor, model, channel"):
        get_metric("mse", {"normalize": "l2"})


def test_needs_no_calibration():
    model, _, _ = trained_mlp()
    stats = get_metric("mse").measure(MetricContext(model, find_layers(model), None, INT4, 0))
    assert len(stats) == 2 and all(s.mean > 0 for s in stats)
