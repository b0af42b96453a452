import pytest
import torch

from tests.utils.workers_factories import CNN, MLP
from workers.architectures import ARCHITECTURES, build_model


def test_builtins_build_and_run():
    assert {"mlp", "cnn"} <= set(ARCHITECTURES)
    assert build_model("mlp", MLP)(torch.randn(2, 6)).shape == (2, 4)
    cnn = build_model("cnn", CNN)
    assert cnn(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    assert [n for n, _ in cnn.named_children() if n.startswith(("conv", "head"))] == ["conv1", "conv2", "head"]


def test_mlp_without_hidden_layers_is_one_linear():
    model = build_model("mlp", {"in_features": 3, "hidden": [], "out_features": 2})
    assert [n for n, _ in model.named_children()] == ["fc1"]


@pytest.mark.parametrize(
    "name, params, field",
    [
        ("mlp", {**MLP, "hidden": [8, 0]}, "hidden: must be a list of positive integers"),
        ("mlp", {**MLP, "hidden": "8"}, "hidden: must be a list of positive integers"),
        ("mlp", {**MLP, "in_features": 2.5}, "in_features: must be a positive integer"),
        ("mlp", {**MLP, "out_features": True}, "out_features: must be a positive integer"),
        ("mlp", {**MLP, "activation": "swish"}, "activation: must be one of relu, gelu, tanh"),
        ("mlp", {k: v for k, v in MLP.items() if k != "in_features"}, "in_features: required"),
        ("mlp", {**MLP, "dropout": 0.1}, "dropout: unknown hyperparameter"),
        ("cnn", {**CNN, "channels": []}, "channels: must be a list of positive integers"),
        ("cnn", {**CNN, "image_size": 2}, "image_size: 2 stages"),
        ("cnn", {**CNN, "kernel_size": 4}, "kernel_size: must be odd"),
        ("cnn", {**CNN, "num_classes": 0}, "num_classes: must be a positive integer"),
    ],
)
def test_bad_hyperparams_name_the_field(name, params, field):
    with pytest.raises(ValueError) as info:
        build_model(name, params)
    assert str(info.value).startswith(field)


def test_unknown_architecture_lists_valid_names():
    with pytest.raises(ValueError, match=r"^architecture: unknown 'resnet' \(valid: cnn, mlp\)"):
        build_model("resnet", {})
    with pytest.raises(ValueError, match="^hyperparams: must be a JSON object"):
        build_model("mlp", [1, 2])
