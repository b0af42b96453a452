"""A `.pt2` exported the default way (`torch.export.export(m, (x,))`, batch fixed) is fed that batch."""

import pytest
import torch
from torch import nn

from tests.utils.workers_factories import CNN, save_dataset
from workers.architectures import build_model
from workers.errors import ModelLoadError
from workers.jobs import describe_model_job, run_analysis_job
from workers.models import load_model


def _export(tmp_path, model, *example, dynamic=None, name="m.pt2") -> dict:
    path = tmp_path / name
    torch.export.save(torch.export.export(model, example, dynamic_shapes=dynamic), str(path))
    return {"format": "pt2", "path": str(path)}


@pytest.fixture
def cnn():
    torch.manual_seed(0)
    return build_model("cnn", CNN).eval()


def test_a_static_batch_export_is_recognised_and_its_signature_recorded(tmp_path, cnn):
    source = _export(tmp_path, cnn, torch.randn(4, 1, 8, 8))
    assert load_model(source).bitplan_static_batch == 4
    assert describe_model_job(source)["inputs"] == {
        "takes": "tensor", "shape": [4, 1, 8, 8], "dtype": "float32", "static_batch": 4
    }
    dynamic = _export(tmp_path, cnn, torch.randn(4, 1, 8, 8), dynamic=({0: torch.export.Dim("batch")},), name="d.pt2")
    assert describe_model_job(dynamic)["inputs"] == {
        "takes": "tensor", "shape": [None, 1, 8, 8], "dtype": "float32", "static_batch": None
    }
    assert not hasattr(load_model(dynamic), "bitplan_static_batch")


def test_a_static_batch_pt2_analyses_in_its_batch_size_and_reports_the_remainder(tmp_path, cnn):
    source = _export(tmp_path, cnn, torch.randn(4, 1, 8, 8))
    x = torch.randn(10, 1, 8, 8)
    request = {"model": source, "dataset_path": save_dataset(tmp_path / "d.safetensors", x), "candidates": ["int4", "int8"],
               "metric": "hutchinson", "seed": 3, "options": {"max_probes": 16}}
    out = run_analysis_job(request)
    prov = out["provenance"]
    assert prov["static_batch"] == {"batch": 4, "samples_used": 8, "samples_left_out": 2}
    assert prov["batch_size"]["used"] == 4
    assert out["calibration_samples"] == 8
    assert [row["name"] for row in out["layers"]] == ["conv1", "conv2", "head"]
    # MACs are per sample, as for the eager model traced at batch 1
    eager = run_analysis_job({**request, "model": {"format": "safetensors", "path": _save(tmp_path, cnn),
                                                   "architecture": "cnn", "hyperparams": CNN}})
    assert [row["macs"] for row in out["layers"]] == [row["macs"] for row in eager["layers"]]


def _save(tmp_path, model) -> str:
    from tests.utils.workers_factories import save_model

    return save_model(tmp_path / "m.safetensors", model)


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x, mask):
        return self.fc(x) * mask


def test_a_pt2_taking_two_inputs_is_refused_with_how_to_re_export(tmp_path):
    source = _export(tmp_path, TwoInputs().eval(), torch.randn(4, 6), torch.ones(4, 3))
    with pytest.raises(ModelLoadError, match=r"takes 2 inputs .*dynamic_shapes"):
        describe_model_job(source)
