"""Built-in architectures: the models a user can upload as bare safetensors weights.

A safetensors file holds tensors but no code, so the model's structure comes from here: a name plus
JSON hyperparameters rebuild the exact module whose `state_dict()` the file was saved from. Layer
names are stable and readable (`fc1`, `conv2`, `head`) because they appear in every plan.

Each builder validates its hyperparameters and raises `ValueError` whose message starts with the
field name, so the API can hand it to the user unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["ARCHITECTURES", "build_model"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


def _positive_int(params: Mapping[str, Any], field: str, default: int | None = None) -> int:
    value = params.get(field, default)
    if value is None:
        raise ValueError(f"{field}: required")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{field}: must be a positive integer, got {value!r}")
    return value


def _positive_int_list(params: Mapping[str, Any], field: str, *, allow_empty: bool) -> list[int]:
    value = params.get(field)
    if value is None:
        raise ValueError(f"{field}: required")
    if (
        not isinstance(value, list | tuple)
        or (not value and not allow_empty)
        or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in value)
    ):
        raise ValueError(f"{field}: must be a list of positive integers, got {value!r}")
    return list(value)


def _reject_unknown(params: Mapping[str, Any], known: tuple[str, ...]) -> None:
    if not isinstance(params, Mapping):
        raise ValueError(f"hyperparams: must be a JSON object, got {type(params).__name__}")
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown hyperparameter (valid: {', '.join(known)})")


def _mlp(params: Mapping[str, Any]) -> nn.Module:
    """Linear layers fc1..fcN with an activation between them; input (batch, in_features)."""
    _reject_unknown(params, ("in_features", "hidden", "out_features", "activation"))
    in_features = _positive_int(params, "in_features")
    hidden = _positive_int_list(params, "hidden", allow_empty=True)
    out_features = _positive_int(params, "out_features")
    activation = params.get("activation", "relu")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation: must be one of {', '.join(_ACTIVATIONS)}, got {activation!r}")
    widths = [in_features, *hidden, out_features]
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i in range(len(widths) - 1):
        layers[f"fc{i + 1}"] = nn.Linear(widths[i], widths[i + 1])
        if i < len(widths) - 2:
            layers[f"act{i + 1}"] = _ACTIVATIONS[activation]()
    return nn.Sequential(layers)


def _cnn(params: Mapping[str, Any]) -> nn.Module:
    """conv_i (same padding) + ReLU + 2×2 max-pool per stage, then a Linear `head`.

    Input (batch, in_channels, image_size, image_size). Each stage halves the image (floor), so
    `image_size` must be at least 2**len(channels).
    """
    _reject_unknown(params, ("in_channels", "image_size", "channels", "kernel_size", "num_classes"))
    in_channels = _positive_int(params, "in_channels")
    image_size = _positive_int(params, "image_size")
    channels = _positive_int_list(params, "channels", allow_empty=False)
    kernel_size = _positive_int(params, "kernel_size", 3)
    num_classes = _positive_int(params, "num_classes")
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size: must be odd (same padding), got {kernel_size}")
    if image_size < 2 ** len(channels):
        raise ValueError(
            f"image_size: {len(channels)} stages halve the image {len(channels)} times,"
            f" so it must be at least {2 ** len(channels)}, got {image_size}"
        )
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    size, prev = image_size, in_channels
    for i, width in enumerate(channels, start=1):
        layers[f"conv{i}"] = nn.Conv2d(prev, width, kernel_size, padding=kernel_size // 2)
        layers[f"act{i}"] = nn.ReLU()
        layers[f"pool{i}"] = nn.MaxPool2d(2)
        size, prev = size // 2, width
    layers["flatten"] = nn.Flatten()
    layers["head"] = nn.Linear(prev * size * size, num_classes)
    return nn.Sequential(layers)


ARCHITECTURES: dict[str, Callable[[Mapping[str, Any]], nn.Module]] = {"mlp": _mlp, "cnn": _cnn}


def build_model(name: str, hyperparams: Mapping[str, Any] | None) -> nn.Module:
    """A freshly initialised float32 module of architecture `name`, in eval mode."""
    if name not in ARCHITECTURES:
        raise ValueError(f"architecture: unknown {name!r} (valid: {', '.join(sorted(ARCHITECTURES))})")
    model = ARCHITECTURES[name](hyperparams if hyperparams is not None else {})
    return model.to(torch.float32).eval()
