"""Device choice, out-of-memory batch back-off, seeds and costs in the table."""

import pytest
import torch
from torch import nn

from tests.utils.workers_factories import save_dataset, save_model, trained_mlp
from tests.utils.workers_factories import MLP
from workers.analysis import analyse, is_out_of_memory, resolve_device
from workers.costs import PROFILES
from workers.data import Calibration
from workers.errors import AnalysisError
from workers.jobs import run_analysis_job
from workers.metrics import get_metric
from workers.quantizers import parse_candidates


class BatchLimited(nn.Module):
    """A model that fails like a GPU allocator when a batch holds more than `limit` samples."""

    def __init__(self, inner: nn.Module, limit: int, message: str | None = None, only_with_grad: bool = False):
        super().__init__()
        self.inner = inner
        self.limit = limit
        self.message = message
        self.only_with_grad = only_with_grad  # the no-grad cost trace fits, the metric's graph does not

    def forward(self, x):
        if x.shape[0] > self.limit and (torch.is_grad_enabled() or not self.only_with_grad):
            if self.message:
                raise RuntimeError(self.message)
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.shape[0]} samples")
        return self.inner(x)


def _metric():
    return get_metric("hutchinson", {"min_probes": 2, "max_probes": 4, "probe_batch": 2})


def test_batch_size_halves_on_out_of_memory_until_it_fits():
    model, x, y = trained_mlp()
    calib = Calibration(x, y, batch_size=64)
    messages = []
    table = analyse(BatchLimited(model, limit=10), calib, parse_candidates(["int4"]), _metric(),
                    report=lambda f, m: messages.append((f, m)))
    assert table.provenance["batch_size"] == {"requested": 64, "used": 8}
    assert [m for _, m in messages if "out of memory" in m] == [
        "out of memory at batch size 64 on cpu; retrying with 32",
        "out of memory at batch size 32 on cpu; retrying with 16",
        "out of memory at batch size 16 on cpu; retrying with 8",
    ]
    fractions = [f for f, _ in messages]
    assert fractions == sorted(fractions)
    reference = analyse(model, Calibration(x, y, batch_size=8), parse_candidates(["int4"]), _metric())
    assert [r.mean for r in table.layers] == pytest.approx([r.mean for r in reference.layers])


@pytest.mark.parametrize("only_with_grad", [False, True])  # fails in the cost trace / in the metric
def test_out_of_memory_at_batch_size_one_is_a_clear_error(only_with_grad):
    model, x, y = trained_mlp()
    calib = Calibration(x, y, batch_size=4)
    with pytest.raises(AnalysisError, match="even with batch size 1: lower options.max_length"):
        analyse(BatchLimited(model, limit=0, message="CUDA error: out of memory", only_with_grad=only_with_grad),
                calib, parse_candidates(["int4"]), _metric())
    assert calib.batch_size == (1 if only_with_grad else 4)


def test_other_errors_are_not_retried():
    model, x, y = trained_mlp()
    with pytest.raises(AnalysisError, match="forward failed") as info:
        analyse(BatchLimited(model, limit=10, message="shapes do not match"), Calibration(x, y, batch_size=64),
                parse_candidates(["int4"]), _metric())
    assert not is_out_of_memory(info.value)


def test_device_resolution():
    assert resolve_device("auto") == resolve_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="options.device"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA device"):
            resolve_device("cuda")


def test_job_costs_seed_and_latency_table(tmp_path):
    model, x, y = trained_mlp()
    source = {"format": "safetensors", "path": save_model(tmp_path / "m.safetensors", model),
              "architecture": "mlp", "hyperparams": MLP}
    data = save_dataset(tmp_path / "d.safetensors", x, y)
    latency = {"fc1": {"int4": 0.2, "int8_a8": 0.1}, "fc2": {"int4": 0.3, "int8_a8": 0.15}}
    out = run_analysis_job({"model": source, "dataset_path": data, "candidates": ["int4", "int8_a8"], "seed": 5,
                            "metric": "hutchinson", "options": {"latency_table": latency, "max_probes": 16}})
    fc1 = out["layers"][0]
    assert fc1["macs"] == 6 * 8 and [c["bops"] for c in fc1["candidates"]] == [48 * 4 * 16, 48 * 8 * 8]
    assert [c["latency_ms"] for c in fc1["candidates"]] == [0.2, 0.1]
    assert out["provenance"]["seed"] == 5 and out["provenance"]["latency"] == {"model": "table"}
    assert out["provenance"]["calibration"]["samples"] == 64
    with pytest.raises(ValueError, match="either a latency table or a hardware profile"):
        run_analysis_job({"model": source, "dataset_path": data, "options": {"latency_table": latency, "hardware": "t4"}})
    with pytest.raises(ValueError, match="layer 'fc2' missing"):
        run_analysis_job({"model": source, "dataset_path": data, "candidates": ["int4"],
                          "options": {"latency_table": {"fc1": {"int4": 1}}}})
    assert PROFILES["t4"].peak_for(8) == 130e12


def test_mse_with_hardware_traces_a_synthetic_sample(tmp_path):
    """No calibration data: MACs come from one zero sample of the recorded input shape, so bops and
    roofline latency exist for a data-free metric; with no sample at all the table says why."""
    model, _, _ = trained_mlp()
    source = {"format": "safetensors", "path": save_model(tmp_path / "m.safetensors", model),
              "architecture": "mlp", "hyperparams": MLP}
    out = run_analysis_job({"model": source, "metric": "mse", "candidates": ["int4", "int8_a8"],
                            "options": {"hardware": "t4"}})
    fc1 = out["layers"][0]
    assert fc1["macs"] == 6 * 8 and [c["bops"] for c in fc1["candidates"]] == [48 * 4 * 16, 48 * 8 * 8]
    assert all(c["latency_ms"] > 0 for row in out["layers"] for c in row["candidates"])
    assert out["provenance"]["cost_sample"] == "synthetic" and out["provenance"]["cost_sample_shape"] == [1, 6]
    assert [w["code"] for w in out["warnings"]] == []

    table = analyse(model, None, parse_candidates(["int4"]), get_metric("mse"), hardware=PROFILES["t4"],
                    no_cost_sample="the model's input shape is not known")
    assert table.layers[0].candidates[0].latency_ms is None
    (warning,) = [w for w in table.warnings if w["code"] == "cost_unavailable"]
    assert warning["values"]["costs"] == ["bops", "latency_ms"]
    assert "bops and latency_ms not computed: the model's input shape is not known" in warning["message"]
