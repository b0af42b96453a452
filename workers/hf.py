"""Hugging Face model directories (config.json + *.safetensors + tokenizer files), via transformers.

Optional: `pip install bitplan[hf]`. `available()` is False without transformers; nothing here
imports it at module import. Loading is offline and runs no code from the directory:
`local_files_only=True`, `trust_remote_code=False` (a config whose `auto_map` names custom classes
is refused by transformers), and `use_safetensors=True` (pickled `pytorch_model.bin` is refused).
The model class is transformers' own class named in `config.architectures[0]` (so a
`GPT2LMHeadModel` directory gets its LM head), else `AutoModel`.

The loaded module keeps its own class and module names, because layer names appear in every plan
and every export config (GPTQModel's `dynamic` regexes, llm-compressor targets match them). Only its
`forward` is replaced on the instance so that the analysis can call `model(input_ids)` and get one
tensor: the logits (or, for a bare encoder, the last hidden state). For causal LMs the last
position is dropped, so position t predicts token t + 1 and the next-token targets of a text
calibration set are just the inputs shifted by one (`model.bitplan_causal_lm` says which applies).
Attention runs in the "eager" implementation: the fused kernels lack the double backward the
Hessian metrics need.

ONNX is not supported, on purpose: the one converter that serves (onnx2torch) had its last release
in 2024-08 (1.5.15; a fork exists only to support Python 3.13), and it turns an exported
transformer's MatMul-with-initializer nodes into functional ops over buffers, not Linear modules
with Parameters, so neither layer discovery nor the Hessian metrics (which differentiate
Parameters) would see the weights without a graph rewrite of our own. torch.export (.pt2) and HF
directories cover the same models with their real layers.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from typing import TYPE_CHECKING

from workers.errors import DatasetError, ModelLoadError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["available", "hf_config_and_class", "is_conv1d", "load_hf_model", "load_tokenizer", "single_output"]

_MISSING = "model.format: 'hf' needs the optional dependency transformers (pip install 'bitplan[hf]')"


def available() -> bool:
    """True when transformers can be imported (checked without importing it)."""
    return importlib.util.find_spec("transformers") is not None


def is_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2's projections): a linear layer whose weight is stored (in, out).
    Only consulted when transformers is already imported, so plain models never import it."""
    mod = sys.modules.get("transformers.pytorch_utils")
    cls = getattr(mod, "Conv1D", None) if mod is not None else None
    return cls is not None and isinstance(module, cls)


def _check_directory(path: str) -> None:
    if not os.path.isdir(path):
        raise ModelLoadError(f"model.path: no such directory {path!r} (an 'hf' model is a directory)")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelLoadError(f"model: {path!r} has no config.json: not a Hugging Face model directory")
    if not any(name.endswith(".safetensors") for name in os.listdir(path)):
        raise ModelLoadError(f"model: {path!r} has no *.safetensors weights (pickled .bin files are not read)")


def load_hf_model(path: str) -> nn.Module:
    """The directory's model in float32, eval mode, with the single-tensor forward described above."""
    config, cls = hf_config_and_class(path)
    import torch

    try:
        model = cls.from_pretrained(
            path,
            config=config,
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=True,
            dtype=torch.float32,
            attn_implementation="eager",
        )
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for one bad directory
        raise ModelLoadError(f"model: cannot load the Hugging Face directory ({type(exc).__name__}: {exc})") from exc
    return single_output(model, path)


def hf_config_and_class(path: str):
    """(config, model class) of a directory, checked as load_hf_model checks it (workers.streaming
    builds the class itself, its weights left on the meta device)."""
    if not available():
        raise ModelLoadError(_MISSING)
    _check_directory(path)
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for one bad directory
        raise ModelLoadError(f"model: cannot load the Hugging Face directory ({type(exc).__name__}: {exc})") from exc
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if isinstance(arch, str) else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        cls = transformers.AutoModel
    return config, cls


def single_output(model: nn.Module, path: str) -> nn.Module:
    """`model` with the single-tensor forward and the bitplan attributes, float32, eval mode."""
    import torch

    causal = _is_causal_lm(model)
    model.forward = functools.partial(_single_output, model.forward, causal)
    model.bitplan_causal_lm = causal
    model.bitplan_hf_path = path
    return model.to(torch.float32).eval()


def _is_causal_lm(model: nn.Module) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return type(model).__name__ in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def _single_output(original, causal: bool, input_ids, **kwargs):
    out = original(input_ids=input_ids, use_cache=False, return_dict=True, **kwargs)
    tensor = getattr(out, "logits", None)
    if tensor is None:
        tensor = getattr(out, "last_hidden_state", None)
    if tensor is None:
        tensor = out[0]
    return tensor[:, :-1] if causal else tensor


def load_tokenizer(path: str):
    """The directory's own tokenizer (offline, no remote code); DatasetError when it has none."""
    if not available():
        raise DatasetError("dataset: text calibration needs transformers (pip install 'bitplan[hf]')")
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001
        raise DatasetError(
            f"dataset: text calibration needs the model's tokenizer, and {path!r} has none usable"
            f" ({type(exc).__name__}: {exc})"
        ) from exc
