"""llama.cpp: a plan as the per-tensor overrides `llama-quantize` takes, with GGUF tensor names.

`llama-quantize` (tools/quantize) takes repeated `--tensor-type REGEX=TYPE` or one
`--tensor-type-file` of such lines (whitespace-separated, no comments); src/llama-quant.cpp applies
the first pattern that `std::regex_search`-es a tensor's name, then its own shape fallback. With
`--pure` its k-quant mixture heuristics leave every other tensor at the positional default type.
So every planned weight gets one anchored pattern (`^blk\\.0\\.attn_q\\.weight$`) naming the GGML type
bitplan measured (after the same shape fallback), and tied modules (GPT-2 writes `output.weight`
as a copy of `token_embd.weight`) get the same type.

GGUF names come from the `gguf` package's own map for the model's architecture
(`gguf.get_tensor_name_map`), which is what llama.cpp's convert_hf_to_gguf.py renames with; the
architecture is read from the Hugging Face directory's config.json (`model_type`).

What llama.cpp can hold: the gguf_* candidates (GGML types), fp16 / bf16, and layers left float
(written F16). Other formats (INT with FP16 channel scales, FP8, NVFP4, OCP MX) have no GGML type and
are refused, naming the layer. llama-quantize never quantizes position embeddings, token types or
norms: such a layer keeps the converter's type and the export's warning says how many bytes that adds.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shlex
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workers.exports._base import Export, ExportError, Exporter, ExportLayer, ExportPlan, describe, weight_settings

# HF model_type -> GGUF architecture name where they differ (convert_hf_to_gguf.py's registrations)
_ARCH_ALIASES = {"mistral": "llama", "mixtral": "llama", "gpt_neox": "gptneox", "phi": "phi2",
                 "qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe", "gpt_bigcode": "starcoder"}
_FLOAT_TYPES = ("F16", "BF16", "F32")
_IN, _OUT = "model-f32.gguf", "model-bitplan.gguf"
_TYPES_FILE = "tensor-types.txt"


def _exact(name: str) -> str:
    return f"^{re.escape(name)}$"


def _never_quantized(tensor: str) -> bool:
    """llama-quant.cpp tensor_allows_quantization's name rules that apply to weights bitplan plans."""
    return (not tensor.endswith("weight") or "_norm.weight" in tensor or tensor in ("position_embd.weight",
            "token_types.weight") or "ffn_gate_inp.weight" in tensor)


def _architecture(plan: ExportPlan) -> tuple[str, int]:
    """(GGUF architecture name, block count) from the model's config.json."""
    import gguf

    model = plan.model or {}
    if model.get("format") != "hf":
        raise ExportError(
            "llamacpp: needs a Hugging Face model directory (its config.json names the architecture llama.cpp"
            f" converts); this model is {model.get('format') or 'unknown'}"
            + (f" ({model['architecture']})" if model.get("architecture") else "")
        )
    try:
        config = json.loads((Path(model["path"]) / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ExportError(f"llamacpp: the model's config.json cannot be read ({type(exc).__name__})") from exc
    model_type = str(config.get("model_type", ""))
    arch = _ARCH_ALIASES.get(model_type, model_type)
    if arch not in gguf.MODEL_ARCH_NAMES.values():
        raise ExportError(f"llamacpp: model_type {model_type!r} has no GGUF architecture in the gguf package")
    blocks = config.get("num_hidden_layers") or config.get("n_layer") or config.get("num_layers") or 0
    numbers = [int(n) for layer in plan.layers for n in re.findall(r"\.(\d+)\.", f".{layer.name}.")]
    return arch, max(int(blocks), max(numbers, default=-1) + 1)


def _name_map(arch: str, blocks: int):
    import gguf

    member = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    return gguf.get_tensor_name_map(member, blocks)


def gguf_name(name_map, module: str) -> str | None:
    """The GGUF tensor holding the weight of HF module `module`, by gguf's own map."""
    return name_map.get_name(f"{module}.weight", try_suffixes=(".weight",))


def _ggml_type(layer: ExportLayer, notes: dict[tuple[str, ...], list[str]]) -> str:
    s = weight_settings(layer.candidate)
    if s is None:
        return "F16"
    if s["format"] in ("fp16", "bf16"):
        return {"fp16": "F16", "bf16": "BF16"}[s["format"]]
    if s["format"] != "gguf":
        hint = (" (GGML's MXFP4 rounds ties toward zero where OCP MX rounds them to even: gguf_mxfp4 measures it)"
                if s["format"] == "mx" else "")
        raise ExportError(
            f"llamacpp: layer {layer.name!r} is {layer.candidate} ({describe(s)}); llama.cpp stores GGML block"
            f" types only: plan with gguf_* candidates{hint}"
        )
    from workers.quantizers._gguf import stored_type

    stored = stored_type(s["ggml_type"], layer.weight_shape)
    if stored != s["ggml_type"]:
        notes.setdefault(("fallback", s["ggml_type"], stored, str(s["group_size"])), []).append(layer.name)
    if "activation_bits" in s:
        notes.setdefault(("activations",), []).append(layer.name)
    return stored


def _said(notes: dict[tuple[str, ...], list[str]]) -> list[str]:
    """One warning per kind of note, naming its first layers (a real model has hundreds)."""
    out = []
    for key, layers in notes.items():
        named = ", ".join(repr(n) for n in layers[:3]) + (f" and {len(layers) - 3} more" if len(layers) > 3 else "")
        if key[0] == "fallback":
            _, asked, stored, block = key
            out.append(f"llamacpp: {len(layers)} layer(s) ({named}) have rows that are not a multiple of {block}"
                       f" weights: llama-quantize writes {stored} there, not {asked}, and bitplan measured {stored}")
        else:
            out.append(f"llamacpp: {len(layers)} layer(s) ({named}) name an activation width: llama-quantize sets"
                       " weight types only; activations are the engine's choice")
    return out


def _rules(plan: ExportPlan) -> tuple[str, int, list[dict[str, str]], list[str]]:
    arch, blocks = _architecture(plan)
    name_map = _name_map(arch, blocks)
    rules: list[dict[str, str]] = []
    warnings: list[str] = []
    notes: dict[tuple[str, ...], list[str]] = {}
    for layer in plan.layers:
        ggml_type = _ggml_type(layer, notes)
        for module in (layer.name, *layer.shared_with):
            tensor = gguf_name(name_map, module)
            if tensor is None:
                raise ExportError(
                    f"llamacpp: layer {module!r} has no GGUF tensor name for architecture {arch!r} (gguf's tensor-name"
                    " map has none: llama.cpp's converter does not write it)"
                )
            if _never_quantized(tensor):
                # llama-quantize keeps such a tensor in the converter's type (F32 with --outtype f32)
                extra = ""
                if layer.candidate is not None and module == layer.name:
                    grown = 4 * math.prod(layer.weight_shape) - layer.quantizer.bytes(layer.weight_shape)
                    extra = f" instead of {layer.candidate}: the model is {grown} bytes larger than the plan"
                warnings.append(f"llamacpp: layer {module!r} ({tensor}): llama-quantize never quantizes it, so it"
                                f" keeps the converter's type (F32 with --outtype f32){extra}")
                continue
            if any(rule["tensor"] == tensor for rule in rules):
                continue  # two modules, one GGUF tensor
            rules.append({"layer": module, "candidate": layer.candidate, "tensor": tensor, "pattern": _exact(tensor),
                          "type": ggml_type})
    return arch, blocks, rules, warnings + _said(notes)


def _default_type(plan: ExportPlan, rules: list[dict[str, str]]) -> str:
    shapes = {layer.name: layer.weight_shape for layer in plan.layers}
    weights = Counter()
    for rule in rules:
        if rule["type"] not in _FLOAT_TYPES and rule["layer"] in shapes:
            weights[rule["type"]] += math.prod(shapes[rule["layer"]])
    if not weights:
        raise ExportError("llamacpp: the plan quantizes no layer to a GGML type (gguf_* candidates)")
    default = max(weights, key=lambda t: (weights[t], t))
    # llama-quantize's positional argument is a file type; MXFP4 exists there only as MXFP4_MOE
    return "MXFP4_MOE" if default == "MXFP4" else default


def _file_lines(rules: list[dict[str, str]]) -> str:
    return "".join(f"{rule['pattern']}={rule['type']}\n" for rule in rules)


class LlamaCppQuantize(Exporter):
    name = "llamacpp"
    description = (
        "llama.cpp: llama-quantize per-tensor overrides (--tensor-type REGEX=TYPE on GGUF tensor names, --pure)"
        " as JSON with the command line and the --tensor-type-file text; GGML types, fp16 and bf16 only"
    )

    def available(self) -> bool:
        return importlib.util.find_spec("gguf") is not None

    def export(self, plan: ExportPlan) -> Export:
        arch, blocks, rules, warnings = _rules(plan)
        default = _default_type(plan, rules)
        arguments = ["--pure"]
        for rule in rules:
            arguments += ["--tensor-type", f"{rule['pattern']}={rule['type']}"]
        tail = [_IN, _OUT, default]
        body = {
            "version": 1,
            "tool": "llama-quantize",
            "architecture": arch,
            "block_count": blocks,
            "default_type": default,
            "tensor_types": rules,
            "convert": f"python convert_hf_to_gguf.py MODEL_DIR --outtype f32 --outfile {_IN}",
            "command": shlex.join(["llama-quantize", *arguments, *tail]),
            "command_with_file": shlex.join(["llama-quantize", "--pure", "--tensor-type-file", _TYPES_FILE, *tail]),
            "tensor_type_file": _file_lines(rules),
            "notes": [
                "convert with --outtype f32 so llama-quantize starts from the weights bitplan measured",
                "--pure: tensors the plan does not name get the default type, not llama-quantize's mixture",
            ],
        }
        return Export((json.dumps(body, indent=2) + "\n").encode(), "application/json", "llamacpp.json",
                      tuple(warnings))

    def read(self, content: bytes, layers: Sequence[str] = ()) -> dict[str, dict[str, Any] | None]:
        """As llama-quantize resolves it: each module's GGUF name by gguf's map for the file's
        architecture, the first pattern that re.search-es it, else the default type."""
        try:
            body = json.loads(content)
            arch, blocks, default = body["architecture"], int(body["block_count"]), body["default_type"]
            rules = _parse_lines(body["tensor_type_file"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ExportError(f"llamacpp: not a llamacpp export ({exc})") from exc
        name_map = _name_map(arch, blocks)
        result: dict[str, dict[str, Any] | None] = {}
        for module in layers or [rule["layer"] for rule in body["tensor_types"]]:
            tensor = gguf_name(name_map, module)
            if tensor is None or _never_quantized(tensor):
                result[module] = None
                continue
            found = next((t for pattern, t in rules if re.search(pattern, tensor)), None)
            result[module] = {"tensor": tensor, "ggml_type": found or default.removesuffix("_MOE")}
        return result


def _parse_lines(text: str) -> list[tuple[str, str]]:
    """`--tensor-type-file` content: whitespace-separated pattern=TYPE, GGML type names checked
    against gguf's list (llama-quantize's parse_ggml_type is case-insensitive)."""
    import gguf

    valid = {t.name for t in gguf.GGMLQuantizationType}
    rules = []
    for token in text.split():
        pattern, sep, ggml_type = token.partition("=")
        if not sep or not pattern or ggml_type.upper() not in valid:
            raise ExportError(f"llamacpp: malformed tensor type {token!r} (expected REGEX=TYPE with a GGML type)")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ExportError(f"llamacpp: pattern {pattern!r} is not a valid regex ({exc})") from exc
        rules.append((pattern, ggml_type.upper()))
    return rules


class LlamaCppTensorTypes(Exporter):
    name = "llamacpp-types"
    description = "llama.cpp: the file for `llama-quantize --pure --tensor-type-file` (REGEX=TYPE lines, GGUF names)"

    def available(self) -> bool:
        return importlib.util.find_spec("gguf") is not None

    def export(self, plan: ExportPlan) -> Export:
        _, _, rules, warnings = _rules(plan)
        _default_type(plan, rules)  # the same refusal as the JSON form when nothing is quantized
        return Export(_file_lines(rules).encode(), "text/plain", _TYPES_FILE, tuple(warnings))

    def read(self, content: bytes, layers: Sequence[str] = ()) -> dict[str, dict[str, Any] | None]:
        """The file names GGUF tensors, so `layers` are GGUF tensor names here (map HF module names
        with gguf's TensorNameMap first); a tensor no pattern matches reads None (the default type)."""
        try:
            rules = _parse_lines(content.decode())
        except UnicodeDecodeError as exc:
            raise ExportError("llamacpp-types: not text") from exc
        result: dict[str, dict[str, Any] | None] = {}
        for tensor in layers:
            found = next((t for pattern, t in rules if re.search(pattern, tensor)), None)
            result[tensor] = None if found is None else {"tensor": tensor, "ggml_type": found}
        return result
