"""Spot checks: measured single-layer loss changes correct the second-order damage of the low-bit
candidates by one factor per candidate, only upwards, and the job records what it did."""

import math

import pytest
import torch

from tests.utils.workers_factories import MLP, save_dataset, save_model, trained_mlp
from workers.analysis import analyse
from workers.data import Calibration
from workers.errors import RequestError
from workers.jobs import run_analysis_job
from workers.metrics import get_metric
from workers.metrics._loss import CalibrationLoss
from workers.models import find_layers
from workers.quantizers import parse_candidates
from workers.spot_check import spot_check
from workers.table import table_warnings

CANDIDATES = parse_candidates(["int2", "int3", "int4", "int8"])


@pytest.fixture(scope="module")
def analysed():
    model, x, _ = trained_mlp({**MLP, "hidden": [16, 16]})
    calibration = Calibration(x, None, batch_size=32)
    table = analyse(model, calibration, CANDIDATES, get_metric("sampled_gauss_newton", {"draws": 2}), seed=1)
    return model, calibration, table


def _measured(model, calibration) -> dict[str, dict[str, float]]:
    """Every layer's single-layer label-free loss change at every candidate, on the whole set."""
    out: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        loss = CalibrationLoss(model, calibration, loss="label_free")
        for info, weight in find_layers(model):
            original = weight.detach().clone()
            out[info.name] = {}
            for q in CANDIDATES:
                weight.copy_(info.quantize(q, original))
                out[info.name][q.name] = math.fsum(float(v) for v in loss.batch_losses())
                weight.copy_(original)
    return out


def _damages(table) -> dict[tuple[str, str], float]:
    return {(row.name, c.candidate): c.damage for row in table.layers for c in row.candidates}


def test_a_quarter_of_the_measured_change_is_raised_back_by_four(analysed):
    model, calibration, table = analysed
    truth = _measured(model, Calibration(calibration.inputs[:16], None, batch_size=1))  # what the check measures on, as it does
    copy = type(table).from_dict(table.to_dict())
    for row in copy.layers:
        for cell in row.candidates:
            cell.raw_damage = cell.damage = truth[row.name][cell.candidate] / 4
            cell.damage_ci = cell.damage / 10
    out = spot_check(model, calibration, copy, CANDIDATES, layers=3, seed=0)
    assert out["samples"] == 16 and len(out["layers"]) == 3
    for name in ("int2", "int3", "int4"):
        assert out["candidates"][name]["factor"] == pytest.approx(4.0, rel=1e-9)
        assert set(out["candidates"][name]["ratios"]) == set(out["layers"])
    assert "int8" not in out["candidates"]  # more than 4 weight bits: not measured, not changed
    for row in copy.layers:
        cells = {c.candidate: c for c in row.candidates}
        for name in ("int2", "int3", "int4"):  # every layer, not only the three measured
            assert cells[name].raw_damage == pytest.approx(truth[row.name][name], rel=1e-9)
            assert cells[name].damage_ci == pytest.approx(truth[row.name][name] / 10, rel=1e-9)
        assert cells["int8"].raw_damage == pytest.approx(truth[row.name]["int8"] / 4, rel=1e-12)
        ladder = [cells[n].damage for n in ("int2", "int3", "int4", "int8")]
        assert ladder == sorted(ladder, reverse=True)  # the monotone repair ran again
    copy.provenance["spot_check"] = out
    warned = [w for w in table_warnings(copy) if w["code"] == "damage_under_predicted"]
    assert [w["values"]["candidate"] for w in warned] == ["int2", "int3", "int4"]
    assert all("4×" in w["message"] and w["layer"] is None for w in warned)


def test_an_over_prediction_is_left_alone(analysed):
    model, calibration, table = analysed
    copy = type(table).from_dict(table.to_dict())
    for row in copy.layers:
        for cell in row.candidates:
            cell.raw_damage *= 1e3
            cell.damage *= 1e3
    before = _damages(copy)
    out = spot_check(model, calibration, copy, CANDIDATES, layers=3, seed=0)
    assert all(v["factor"] == 1.0 for v in out["candidates"].values())
    assert all(r < 1 for v in out["candidates"].values() for r in v["ratios"].values())
    assert _damages(copy) == before
    copy.provenance["spot_check"] = out
    assert [w for w in table_warnings(copy) if w["code"] == "damage_under_predicted"] == []


def test_the_check_forwards_at_the_batch_the_metric_forwarded(analysed):
    model, calibration, table = analysed
    assert table.provenance["metric_run"]["forward_batch"] == 1  # the MLP takes one sample at a time
    seen: list[int] = []
    hook = model.register_forward_pre_hook(lambda module, args: seen.append(int(args[0].shape[0])))
    try:
        out = spot_check(model, calibration, type(table).from_dict(table.to_dict()), CANDIDATES, layers=2, seed=0)
    finally:
        hook.remove()
    assert out["samples"] == 16
    assert seen and set(seen) == {1}  # 16 samples at once would raise the job's peak above the metric's


def test_the_model_is_left_as_it_was(analysed):
    model, calibration, table = analysed
    before = {k: v.clone() for k, v in model.state_dict().items()}
    spot_check(model, calibration, type(table).from_dict(table.to_dict()), CANDIDATES, layers=3, seed=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_job_records_the_check_and_zero_turns_it_off(tmp_path):
    model, x, y = trained_mlp()
    source = {"format": "safetensors", "path": save_model(tmp_path / "m.safetensors", model),
              "architecture": "mlp", "hyperparams": MLP}
    data = save_dataset(tmp_path / "d.safetensors", x, y)
    out = run_analysis_job({"model": source, "dataset_path": data, "candidates": ["int2", "int4", "int8"],
                            "options": {"draws": 1}})
    check = out["provenance"]["spot_check"]
    assert sorted(check["layers"]) == ["fc1", "fc2"] and check["samples"] == 16
    assert set(check["candidates"]) == {"int2", "int4"}
    assert out["timings"]["spot_check_s"] > 0
    for row in out["layers"]:
        for cell in row["candidates"]:
            factor = check["candidates"].get(cell["candidate"], {"factor": 1.0})["factor"]
            assert factor >= 1.0
    off = run_analysis_job({"model": source, "dataset_path": data, "candidates": ["int2", "int4", "int8"],
                            "options": {"draws": 1, "spot_checks": 0}})
    assert off["provenance"]["spot_check"] == {"skipped": "options.spot_checks is 0"}
    scaled = {(r["name"], c["candidate"]): c["raw_damage"] for r in out["layers"] for c in r["candidates"]}
    plain = {(r["name"], c["candidate"]): c["raw_damage"] for r in off["layers"] for c in r["candidates"]}
    for (layer, name), value in plain.items():
        factor = check["candidates"].get(name, {"factor": 1.0})["factor"]
        assert scaled[(layer, name)] == pytest.approx(value * factor, rel=1e-9)
    for bad in (-1, 65, 2.5, True, "8"):
        with pytest.raises(RequestError, match="options.spot_checks"):
            run_analysis_job({"model": source, "dataset_path": data, "options": {"spot_checks": bad}})


def test_other_metrics_are_not_checked(tmp_path):
    model, x, y = trained_mlp()
    source = {"format": "safetensors", "path": save_model(tmp_path / "m.safetensors", model),
              "architecture": "mlp", "hyperparams": MLP}
    data = save_dataset(tmp_path / "d.safetensors", x, y)
    out = run_analysis_job({"model": source, "dataset_path": data, "metric": "loss_delta", "candidates": ["int2"]})
    assert "spot_check" not in out["provenance"]
