"""Models in: where a model comes from, how it is loaded, and which of its layers are decision units.

Three sources. A safetensors file runs no code, so it needs a built-in architecture to pour its
tensors into. A `torch.export` `.pt2` archive carries its own graph; it is read by workers.pt2, which
refuses pickled members, but torch's deserializer and fx code generation stay a large surface, so
call `load_model` on one only inside the sandboxed job child. A Hugging Face model
directory ("hf": config.json + *.safetensors) is loaded by transformers offline with no remote code
(workers.hf; why ONNX is not a source is written there).

Decision units are the weights of Linear / Conv1d / Conv2d / Embedding modules and of transformers'
Conv1D (GPT-2), which is a linear layer storing its weight transposed, (in, out): its LayerInfo
reports the (out, in) shape and `transposed`, and `LayerInfo.quantize` rounds it in that
orientation, so per-channel and group scales run along output channels as for nn.Linear. One
weight used by several modules (tied embedding / LM head) is one unit; the other users' names are
in `shared_with`.

Layer discovery works on ordinary module trees (isinstance checks) and on the flat GraphModule an
exported program unlifts to, whose submodules are plain containers: there the graph's aten.linear /
aten.conv* / aten.embedding calls and the parameter feeding their weight argument say what is a layer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from workers.architectures import build_model
from workers.errors import ModelLoadError
from workers.requests import MODEL_FORMATS as FORMATS  # ModelSource is part of the job contract
from workers.requests import ModelSource

if TYPE_CHECKING:
    from workers.quantizers import Quantizer

__all__ = ["FORMATS", "LayerInfo", "ModelSource", "describe_model", "find_layers", "input_signature", "inspect_model",
           "load_model"]


@dataclass(frozen=True)
class LayerInfo:
    """One quantizable layer: a decision unit of the plan. `weight_shape` is in the quantizer's
    orientation (output channels first); `transposed` says the Parameter stores it the other way."""

    name: str
    kind: str  # "linear" | "conv1d" | "conv2d" | "embedding"
    weight_shape: list[int]
    parameters: int
    transposed: bool = False
    shared_with: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "weight_shape": list(self.weight_shape),
            "parameters": self.parameters,
        }
        if self.transposed:
            row["transposed"] = True
        if self.shared_with:
            row["shared_with"] = list(self.shared_with)
        return row

    def quantize(self, quantizer: Quantizer, weight: torch.Tensor) -> torch.Tensor:
        """`weight` (in the Parameter's layout) after a round trip through `quantizer`, rounded
        in output-channel orientation and returned in the Parameter's layout, float32."""
        w = weight.detach().to(torch.float32)
        if self.transposed:
            return quantizer.quantize(w.t()).t().contiguous()
        return quantizer.quantize(w)


def load_model(source: ModelSource | Mapping[str, Any]) -> nn.Module:
    """The model in float32 on the CPU."""
    if not isinstance(source, ModelSource):
        source = ModelSource.from_dict(source)
    if source.format == "hf":
        from workers.hf import load_hf_model

        return load_hf_model(source.path)
    if not os.path.isfile(source.path):
        raise ModelLoadError(f"model.path: no such file {source.path!r}")
    if source.format == "safetensors":
        return _load_safetensors(source)
    if source.format == "pt2":
        return _load_pt2(source)
    raise ValueError(f"model.format: must be one of {', '.join(FORMATS)}, got {source.format!r}")


def _load_safetensors(source: ModelSource) -> nn.Module:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if source.architecture is None:
        raise ValueError("model.architecture: required for a safetensors model")
    model = build_model(source.architecture, source.hyperparams or {})
    try:
        state = load_file(source.path, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"model: not a readable safetensors file ({exc})") from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        raise ModelLoadError(
            f"model: weights do not fit architecture {source.architecture!r}: {'; '.join(parts)}"
        )
    for key in expected:  # the module's own order: the first layer's mismatch is reported first
        tensor = state[key]
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ModelLoadError(
                f"model: weights do not fit architecture {source.architecture!r}: {key} has shape"
                f" {list(tensor.shape)}, the architecture expects {list(expected[key].shape)}"
            )
        if not tensor.dtype.is_floating_point:
            raise ModelLoadError(f"model: {key} has dtype {tensor.dtype}, expected a floating-point tensor")
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    return model.eval()


def _load_pt2(source: ModelSource) -> nn.Module:
    from workers.pt2 import load_pt2

    module = load_pt2(source.path)  # refuses pickled members; never torch.export.load (see workers.pt2)
    inputs = _graph_inputs(module)
    if len(inputs) == 1 and isinstance(inputs[0]["shape"][0] if inputs[0]["shape"] else None, int):
        # Exported the default way (torch.export.export(m, (x,))): the graph only takes this batch size.
        module.bitplan_static_batch = inputs[0]["shape"][0]
    return module


_REEXPORT_ONE_TENSOR = (
    "bitplan feeds the model one tensor (the calibration inputs, first dimension = samples): export a"
    " model whose forward takes exactly one tensor, e.g. torch.export.export(m, (x,),"
    " dynamic_shapes={'x': {0: torch.export.Dim('batch')}}) (the dynamic batch lets every batch size run)"
)


def _graph_inputs(gm: nn.Module) -> list[dict[str, Any]]:
    """The user inputs of an unlifted exported program: shape (None for a dynamic dimension) and dtype."""
    if not isinstance(gm, torch.fx.GraphModule):
        return []
    rows = []
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            shape = [int(d) if isinstance(d, int) else None for d in val.shape]
            rows.append({"name": node.name, "shape": shape, "dtype": str(val.dtype).removeprefix("torch.")})
        else:
            rows.append({"name": node.name, "shape": None, "dtype": type(val).__name__})
    return rows


def input_signature(model: nn.Module, source: ModelSource) -> dict[str, Any] | None:
    """What one call of the model takes, as JSON the API compares a dataset with before queuing
    (service.core.compat): {"takes": "tensor", "shape": [None | int, ...] (None: any size; the first is the
    batch), "dtype", "static_batch"} or {"takes": "token_ids", "vocab_size", "max_positions"}. None
    when it cannot be told."""
    if source.format == "hf":
        config = getattr(model, "config", None)
        vocab = getattr(config, "vocab_size", None)
        positions = next((getattr(config, k) for k in ("n_positions", "max_position_embeddings")
                          if isinstance(getattr(config, k, None), int)), None)
        return {"takes": "token_ids", "vocab_size": vocab if isinstance(vocab, int) else None,
                "max_positions": positions}
    if source.format == "pt2":
        inputs = _graph_inputs(model)
        if len(inputs) != 1 or inputs[0]["shape"] is None:
            names = ", ".join(f"{r['name']} ({r['dtype']})" for r in inputs) or "none"
            raise ModelLoadError(f"model: this .pt2 takes {len(inputs)} inputs ({names}); {_REEXPORT_ONE_TENSOR}")
        (row,) = inputs
        return {"takes": "tensor", "shape": row["shape"], "dtype": row["dtype"],
                "static_batch": getattr(model, "bitplan_static_batch", None)}
    hp = source.hyperparams or {}
    if source.architecture == "mlp" and isinstance(hp.get("in_features"), int):
        return {"takes": "tensor", "shape": [None, hp["in_features"]], "dtype": "float32", "static_batch": None}
    if source.architecture == "cnn" and isinstance(hp.get("in_channels"), int) and isinstance(hp.get("image_size"), int):
        size = hp["image_size"]
        return {"takes": "tensor", "shape": [None, hp["in_channels"], size, size], "dtype": "float32",
                "static_batch": None}
    return None


_MODULE_KINDS: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.Linear, "linear"),
    (nn.Conv1d, "conv1d"),
    (nn.Conv2d, "conv2d"),
    (nn.Embedding, "embedding"),
)


def find_layers(model: nn.Module) -> list[tuple[LayerInfo, nn.Parameter]]:
    """Quantizable layers in execution-independent order, each with its weight Parameter.

    A weight shared by several layers (tied embeddings, or two Parameters viewing one storage) is
    listed once, under its first name, with the other names in `shared_with`: it is one decision,
    and counting it twice would double its bytes.
    """
    if isinstance(model, torch.fx.GraphModule):
        found = [(name, kind, weight, False) for name, kind, weight in _graph_layers(model)]
    else:
        from workers.hf import is_conv1d

        found = []
        for name, module in model.named_modules(remove_duplicate=False):
            if not _plain_weight(module):
                continue
            if is_conv1d(module) and module.weight.dim() == 2:
                found.append((name or "linear", "linear", module.weight, True))
                continue
            for cls, kind in _MODULE_KINDS:
                if isinstance(module, cls):
                    found.append((name or kind, kind, module.weight, False))
                    break
    first: dict[Any, int] = {}
    entries: list[list[Any]] = []
    for name, kind, weight, transposed in found:
        if not isinstance(weight, nn.Parameter):
            continue
        key = _storage_key(weight)
        if key in first:
            other = entries[first[key]]
            if name != other[0] and name not in other[4]:
                other[4].append(name)
            continue
        first[key] = len(entries)
        entries.append([name, kind, weight, transposed, []])
    result: list[tuple[LayerInfo, nn.Parameter]] = []
    for name, kind, weight, transposed, shared in entries:
        shape = [int(s) for s in weight.shape]
        if transposed:
            shape = shape[::-1]
        info = LayerInfo(name, kind, shape, int(weight.numel()), transposed, tuple(shared))
        result.append((info, weight))
    return result


def _storage_key(weight: torch.Tensor) -> Any:
    """Identity of the numbers a weight holds: two Parameters over one storage are one weight."""
    try:
        ptr = weight.data_ptr()
    except RuntimeError:  # tensors without storage (meta, some subclasses)
        ptr = 0
    if ptr == 0:
        return ("id", id(weight))
    return ("data", weight.device.type, ptr, tuple(weight.shape), tuple(weight.stride()))


def _plain_weight(module: nn.Module) -> bool:
    return isinstance(getattr(module, "weight", None), nn.Parameter)


_CONV_KINDS = {3: "conv1d", 4: "conv2d"}


def _graph_layers(gm: torch.fx.GraphModule) -> list[tuple[str, str, nn.Parameter]]:
    return [(src.target.removesuffix(".weight"), kind, weight) for _, src, kind, weight in graph_layer_calls(gm)]


def graph_layer_calls(gm: torch.fx.GraphModule) -> list[tuple[torch.fx.Node, torch.fx.Node, str, nn.Parameter]]:
    """(call node, weight get_attr node, kind, weight) for every aten.linear / conv / embedding call
    of an exported graph whose weight argument is a stored parameter, in graph order."""
    aten = torch.ops.aten
    weight_arg = {
        aten.linear.default: (1, "linear"),
        aten.conv1d.default: (1, "conv1d"),
        aten.conv2d.default: (1, "conv2d"),
        aten.convolution.default: (1, None),
        aten.embedding.default: (0, "embedding"),
    }
    found = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in weight_arg:
            continue
        index, kind = weight_arg[node.target]
        if len(node.args) <= index:
            continue
        src = node.args[index]
        if not isinstance(src, torch.fx.Node) or src.op != "get_attr":
            continue  # weight computed in the graph, not a stored parameter
        try:
            weight = gm.get_parameter(src.target)
        except AttributeError:
            continue  # a buffer or constant, not trainable state
        if kind is None:
            kind = _CONV_KINDS.get(weight.dim())
            if kind is None:
                continue
        found.append((node, src, kind, weight))
    return found


def inspect_model(source: ModelSource | Mapping[str, Any]) -> list[dict[str, Any]]:
    """The layer inventory as JSON-able rows (name, kind, weight_shape, parameters)."""
    return describe_model(source)["layers"]


def describe_model(source: ModelSource | Mapping[str, Any]) -> dict[str, Any]:
    """{"layers": the layer inventory, "inputs": input_signature} from one load (the upload's inspection)."""
    if not isinstance(source, ModelSource):
        source = ModelSource.from_dict(source)
    model = _model_to_inspect(source)
    layers = find_layers(model)
    if not layers:
        raise ModelLoadError("model: no quantizable layer found (Linear, Conv1d, Conv2d or Embedding)")
    return {"layers": [info.to_dict() for info, _ in layers], "inputs": input_signature(model, source)}


def _model_to_inspect(source: ModelSource) -> nn.Module:
    """The loaded model, checked finite; a Hugging Face directory over the job's memory is inspected
    on the meta device instead (workers.streaming), so what the analysis can stream can be uploaded."""
    if source.format == "hf":
        from workers.streaming import inventory_model, plan_weights

        if plan_weights(source, "auto", torch.device("cpu"))["weights"] == "streamed":
            return inventory_model(source.path)
    model = load_model(source)
    check_finite(model)
    return model


def check_finite(model: nn.Module) -> None:
    """A NaN or ±Inf weight poisons every statistic computed from it (and the plan built on them), so such
    a model is refused at upload, naming the first tensor."""
    for name, tensor in model.state_dict(keep_vars=False).items():
        if tensor.dtype.is_floating_point and not bool(torch.isfinite(tensor).all()):
            raise ModelLoadError(f"model: tensor {name!r} holds NaN or infinite values")
