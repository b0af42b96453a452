import pytest
import torch
from safetensors.torch import save_file

from tests.utils.workers_factories import CNN, MLP, save_model, trained_mlp
from workers.architectures import build_model
from workers.data import Calibration
from workers.errors import ModelLoadError
from workers.metrics import MetricContext, get_metric
from workers.models import LayerInfo, ModelSource, find_layers, inspect_model, load_model


def source(path, arch="mlp", hyper=MLP):
    return ModelSource("safetensors", str(path), arch, dict(hyper))


def test_safetensors_round_trip(tmp_path):
    model, x, _ = trained_mlp()
    loaded = load_model(source(save_model(tmp_path / "m.safetensors", model)))
    assert torch.equal(loaded(x), model(x))
    assert not loaded.training


def test_find_layers_on_module_trees():
    layers = find_layers(build_model("cnn", CNN))
    assert [info for info, _ in layers] == [
        LayerInfo("conv1", "conv2d", [4, 1, 3, 3], 36),
        LayerInfo("conv2", "conv2d", [6, 4, 3, 3], 216),
        LayerInfo("head", "linear", [3, 24], 72),
    ]
    tied = torch.nn.ModuleDict({"emb": torch.nn.Embedding(5, 3), "out": torch.nn.Linear(3, 5, bias=False)})
    tied.out.weight = tied.emb.weight
    assert [(i.name, i.kind) for i, _ in find_layers(tied)] == [("emb", "embedding")]  # one weight, one unit


def test_mismatched_weights_are_named(tmp_path):
    model = build_model("mlp", MLP)
    state = {k: v for k, v in model.state_dict().items() if k != "fc2.bias"}
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "a.safetensors"))
    with pytest.raises(ModelLoadError, match=r"missing keys \['fc2.bias'\]; unexpected keys \['extra.weight'\]"):
        load_model(source(tmp_path / "a.safetensors"))
    save_model(tmp_path / "b.safetensors", build_model("mlp", {**MLP, "hidden": [9]}))
    with pytest.raises(ModelLoadError, match=r"fc1.weight has shape \[9, 6\], the architecture expects \[8, 6\]"):
        load_model(source(tmp_path / "b.safetensors"))


def test_unreadable_files(tmp_path):
    (tmp_path / "junk").write_bytes(b"\x00not a safetensors file at all")
    with pytest.raises(ModelLoadError, match="^model: not a readable safetensors file"):
        load_model(source(tmp_path / "junk"))
    with pytest.raises(ModelLoadError, match="^model: not a readable torch.export archive"):
        load_model(ModelSource("pt2", str(tmp_path / "junk")))
    with pytest.raises(ModelLoadError, match="^model.path: no such file"):
        load_model(source(tmp_path / "missing"))


@pytest.mark.parametrize(
    "data, field",
    [({"format": "onnx", "path": "x"}, "model.format"), ({"format": "pt2", "path": ""}, "model.path"),
     ({"format": "safetensors", "path": "x"}, "model.architecture"), ({"format": "pt2", "path": "x", "dtype": 1}, "model.dtype")],
)
def test_source_validation_names_the_field(data, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        ModelSource.from_dict(data)


def test_pt2_export_load_find_layers_and_trace(tmp_path):
    model, x, y = trained_mlp()
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (x[:4],), dynamic_shapes=({0: batch},))
    path = tmp_path / "m.pt2"
    torch.export.save(program, str(path))
    loaded = load_model({"format": "pt2", "path": str(path)})
    assert isinstance(loaded, torch.fx.GraphModule) and not isinstance(loaded.fc1, torch.nn.Linear)
    infos = [info for info, _ in find_layers(loaded)]
    assert infos == [info for info, _ in find_layers(model)] == [
        LayerInfo("fc1", "linear", [8, 6], 48), LayerInfo("fc2", "linear", [4, 8], 32)
    ]
    assert inspect_model({"format": "pt2", "path": str(path)}) == [i.to_dict() for i in infos]
    # the exported graph is differentiable twice: same probes, same traces as the eager module
    metric = get_metric("hutchinson", {"min_probes": 8, "max_probes": 8})
    traces = [
        [s.mean for s in metric.measure(MetricContext(m, find_layers(m), Calibration(x, y, batch_size=16), [], 1))]
        for m in (model, loaded)
    ]
    assert traces[0] == pytest.approx(traces[1], rel=1e-5)


def test_pt2_conv_layers_are_found_in_the_graph(tmp_path):
    model = build_model("cnn", CNN)
    program = torch.export.export(model, (torch.randn(2, 1, 8, 8),))
    torch.export.save(program, str(tmp_path / "c.pt2"))
    found = [(i.name, i.kind, i.weight_shape) for i, _ in find_layers(load_model(ModelSource("pt2", str(tmp_path / "c.pt2"))))]
    assert found == [("conv1", "conv2d", [4, 1, 3, 3]), ("conv2", "conv2d", [6, 4, 3, 3]), ("head", "linear", [3, 24])]
