import json
import subprocess
import sys

import pytest

from solver.problem import problem_from_dict, problem_to_dict
from tests.utils.workers_factories import MLP, save_dataset, save_model, trained_mlp
from workers.errors import DatasetError, ModelLoadError, RequestError
from workers.metrics import DEFAULT_METRIC
from workers.jobs import inspect_model_job, run_analysis_job
from workers.table import SensitivityTable


@pytest.fixture
def files(tmp_path):
    model, x, y = trained_mlp()
    return {
        "model": {"format": "safetensors", "path": save_model(tmp_path / "m.safetensors", model),
                  "architecture": "mlp", "hyperparams": MLP},
        "labelled": save_dataset(tmp_path / "d.safetensors", x, y),
        "unlabelled": save_dataset(tmp_path / "u.safetensors", x),
    }


def test_analysis_job_end_to_end(files):
    progress = []
    out = run_analysis_job(
        {"model": files["model"], "dataset_path": files["labelled"], "candidates": ["int2", "int4", "int8", "int4_asym_g4"],
         "metric": "hutchinson", "seed": 7, "options": {"batch_size": 16, "tolerance": 0.2, "stop": "ci"}},
        lambda fraction, message: progress.append((fraction, message)),
    )
    assert json.loads(json.dumps(out)) == out
    assert out["seed"] == 7 and out["loss"] == "cross_entropy" and out["calibration_samples"] == 64
    assert set(out["timings"]) >= {"load_model_s", "load_data_s", "measure_s", "quantize_s", "total_s"}
    fractions = [f for f, _ in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and 0 <= fractions[0]
    assert any("ETA" in m for _, m in progress[:-3]), progress
    table = SensitivityTable.from_dict(out)
    assert [row.name for row in table.layers] == ["fc1", "fc2"]
    fc1 = table.layer("fc1")
    assert fc1.samples >= 16 and fc1.ci_halfwidth <= 0.2 * abs(fc1.mean)
    assert [c.bytes for c in fc1.candidates] == [12 + 16, 24 + 16, 48 + 16, 24 + 8 * 2 * 4]
    damages = [fc1.candidate(n).damage for n in ("int2", "int4", "int8")]
    assert damages == sorted(damages, reverse=True)
    problem = table.to_problem()
    assert problem_from_dict(json.loads(json.dumps(problem_to_dict(problem)))) == problem
    assert problem.unit("fc1").weights == 48 and problem.unit("fc1").option("int4").costs == {"bytes": 40.0, "bops": 48 * 4 * 16.0}


def test_label_free_when_the_dataset_has_no_targets(files):
    out = run_analysis_job({"model": files["model"], "dataset_path": files["unlabelled"], "seed": 0})
    assert out["loss"] == "kl_label_free" and out["candidates"] == ["int2", "int3", "int4", "int6", "int8"]
    assert all(layer["mean"] > 0 for layer in out["layers"])


def test_seed_makes_runs_identical(files):
    request = {"model": files["model"], "dataset_path": files["labelled"], "seed": 3, "metric": "hutchinson",
               "options": {"max_probes": 32}}
    a, b = run_analysis_job(request), run_analysis_job(request)
    assert a["layers"] == b["layers"]


@pytest.mark.parametrize(
    "change, error, pattern",
    [
        ({"dataset_path": None}, RequestError, f"^dataset: the {DEFAULT_METRIC} metric needs calibration data"),
        ({"candidates": ["int4", "nf4"]}, ValueError, "^candidate 'nf4': unknown format"),
        ({"metric": "nosuch"}, ValueError, "^metric: unknown 'nosuch'"),
        ({"options": {"probes": 3}}, ValueError, "^options.probes: unknown option"),
        ({"options": {"batch_size": 0}}, ValueError, "^options.batch_size"),
        ({"seed": -1}, ValueError, "^seed"),
        ({"colour": "red"}, ValueError, "^colour: unknown request field"),
    ],
)
def test_bad_requests_name_the_field(files, change, error, pattern):
    with pytest.raises(error, match=pattern):
        run_analysis_job({"model": files["model"], "dataset_path": files["labelled"], **change})


def test_bad_dataset_files(files, tmp_path):
    import torch
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2, 6)}, str(tmp_path / "no_inputs.safetensors"))
    save_file({"inputs": torch.zeros(4, 6), "targets": torch.zeros(4)}, str(tmp_path / "float_targets.safetensors"))
    save_file({"inputs": torch.zeros(4, 6), "targets": torch.zeros(3, dtype=torch.long)}, str(tmp_path / "short.safetensors"))
    save_file({"inputs": torch.zeros(4, 6, dtype=torch.int32)}, str(tmp_path / "int_inputs.safetensors"))
    for name, pattern in [("no_inputs", "^dataset: no tensor named 'inputs'"), ("float_targets", "^targets: must be integer"),
                          ("short", "^targets: first dimension"), ("int_inputs", "^inputs: must be a floating-point")]:
        with pytest.raises(DatasetError, match=pattern):
            run_analysis_job({"model": files["model"], "dataset_path": str(tmp_path / f"{name}.safetensors")})


def test_inspect_job(files):
    assert inspect_model_job(files["model"]) == [
        {"name": "fc1", "kind": "linear", "weight_shape": [8, 6], "parameters": 48},
        {"name": "fc2", "kind": "linear", "weight_shape": [4, 8], "parameters": 32},
    ]
    with pytest.raises(ModelLoadError, match="do not fit"):
        inspect_model_job({**files["model"], "hyperparams": {**MLP, "hidden": [5]}})


def test_importing_jobs_loads_no_torch():
    code = "import sys, workers.jobs, workers.table, workers.metrics; assert 'torch' not in sys.modules, 'torch loaded'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_table_from_dict_names_bad_fields():
    with pytest.raises(ValueError, match="^layers: required"):
        SensitivityTable.from_dict({"metric": "hutchinson", "statistic": "t", "loss": "x", "candidates": []})
    with pytest.raises(ValueError, match=r"^layers\[0\]: malformed"):
        SensitivityTable.from_dict({"metric": "m", "statistic": "t", "loss": "x", "candidates": [], "layers": [{"name": "a"}]})
