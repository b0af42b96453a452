"""The config formats: plain JSON, GPTQModel `dynamic`, llm-compressor config groups, NNCF
`bitwidth_per_scope`, HAWQ `bit_config`. Pure Python; `read` uses the target library's own schema
where it is installed (compressed-tensors) and otherwise parses the structure the way the engine
that reads it does (vLLM's resolution of GPTQ `dynamic` rules)."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from workers.exports._base import (
    Export,
    ExportError,
    Exporter,
    ExportLayer,
    ExportPlan,
    describe,
    integer_settings,
    weight_settings,
)

_JSON = "application/json"


def _dump(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()


def _load(content: bytes, what: str) -> Any:
    try:
        return json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{what}: not valid JSON ({exc})") from exc


def _exact(name: str) -> str:
    return f"^{re.escape(name)}$"


class PlainJson(Exporter):
    name = "json"
    description = "bitplan's own plan: {layer: candidate} (null = left float)"

    def export(self, plan: ExportPlan) -> Export:
        body = {"version": 1, "layers": {layer.name: layer.candidate for layer in plan.layers}}
        return Export(_dump(body), _JSON, "plan.json")

    def read(self, content: bytes, layers: Sequence[str] = ()) -> dict[str, dict[str, Any] | None]:
        body = _load(content, "json")
        if not isinstance(body, dict) or body.get("version") != 1 or not isinstance(body.get("layers"), dict):
            raise ExportError("json: expected {\"version\": 1, \"layers\": {...}}")
        return {name: weight_settings(cand) for name, cand in body["layers"].items()}


# ---------------------------------------------------------------------------------------------- GPTQ
_GPTQ_BITS = (2, 3, 4, 8)  # what GPTQModel and vLLM's GPTQ kernels take


def _names(layer: ExportLayer) -> tuple[str, ...]:
    """The module names a layer's weight goes by: its own and those of modules tied to it."""
    return (layer.name, *layer.shared_with)


def _kept_16_bit(target: str, layer: ExportLayer, why: str) -> str:
    planned = layer.quantizer.bytes(layer.weight_shape)
    extra = 2 * math.prod(layer.weight_shape) - planned
    return (f"{target}: layer {layer.name!r} ({layer.kind}) is planned {layer.candidate} but {why}, so it stays"
            f" 16-bit: the model is {extra} bytes larger than the plan")


def _quantized(layer: ExportLayer) -> bool:
    s = weight_settings(layer.candidate)
    return s is not None and s["format"] not in ("fp16", "bf16")


def _gptq_settings(layer: ExportLayer) -> dict[str, Any] | None:
    s = integer_settings("gptqmodel", layer)
    if s is None:
        return None
    if s["bits"] not in _GPTQ_BITS:
        raise ExportError(
            f"gptqmodel: layer {layer.name!r} is {layer.candidate} ({s['bits']} bits); GPTQ takes"
            f" {', '.join(map(str, _GPTQ_BITS))}"
        )
    if s["strategy"] == "tensor":
        raise ExportError(f"gptqmodel: layer {layer.name!r} is {layer.candidate} (per tensor); GPTQ is per channel or"
                          " per group")
    return {"bits": s["bits"], "group_size": s["group_size"] or -1, "sym": s["symmetric"]}


class GptqModelDynamic(Exporter):
    name = "gptqmodel"
    description = (
        "GPTQModel quantize_config with `dynamic` per-module overrides (\"+:\" regex → bits/group_size/sym,"
        " \"-:\" regex → not quantized), as vLLM and SGLang honour it; integer Linear layers only,"
        " other layers excluded with a \"-:\" rule and a warning"
    )

    def export(self, plan: ExportPlan) -> Export:
        settings: dict[str, dict[str, Any] | None] = {}
        warnings: list[str] = []
        for layer in plan.layers:
            if layer.kind != "linear" and _quantized(layer):
                # GPTQModel and vLLM's GPTQ loader quantize nn.Linear modules only
                warnings.append(_kept_16_bit("gptqmodel", layer, "GPTQModel quantizes Linear layers only"))
                settings[layer.name] = None
            else:
                settings[layer.name] = _gptq_settings(layer)
        weights = Counter()
        for layer in plan.layers:
            if settings[layer.name] is not None:
                key = tuple(sorted(settings[layer.name].items()))
                weights[key] += math.prod(layer.weight_shape) if layer.weight_shape else 1
        if not weights:
            raise ExportError("gptqmodel: the plan quantizes no Linear layer to an integer format")
        base = dict(max(weights, key=lambda k: (weights[k], k)))
        dynamic: dict[str, dict[str, Any]] = {}
        for layer in plan.layers:
            for name in _names(layer):
                if settings[layer.name] is None:
                    dynamic[f"-:{_exact(name)}"] = {}
                elif settings[layer.name] != base:
                    dynamic[f"+:{_exact(name)}"] = dict(settings[layer.name])
        body = {
            "bits": base["bits"],
            "group_size": base["group_size"],
            "sym": base["sym"],
            "desc_act": False,
            "quant_method": "gptq",
            "checkpoint_format": "gptq",
            "dynamic": dynamic,
        }
        return Export(_dump(body), _JSON, "quantize_config.json", tuple(warnings))

    def read(self, content: bytes, layers: Sequence[str] = ()) -> dict[str, dict[str, Any] | None]:
        """vLLM's reading: for each module, the first `dynamic` rule whose regex re.match-es its name
        decides ("-:" → not quantized, "+:" → overrides on the base config); no rule → base."""
        body = _load(content, "gptqmodel")
        for key in ("bits", "group_size", "sym", "dynamic"):
            if key not in body:
                raise ExportError(f"gptqmodel: missing {key!r}")
        dynamic = body["dynamic"]
        if not isinstance(dynamic, dict):
            raise ExportError("gptqmodel: dynamic must be an object")
        for pattern, overrides in dynamic.items():
            if not isinstance(overrides, dict) or set(overrides) - {"bits", "group_size", "sym", "desc_act"}:
                raise ExportError(f"gptqmodel: rule {pattern!r} overrides unknown keys")
            try:
                re.compile(pattern.removeprefix("-:").removeprefix("+:"))
            except re.error as exc:
                raise ExportError(f"gptqmodel: rule {pattern!r} is not a valid regex ({exc})") from exc
        result: dict[str, dict[str, Any] | None] = {}
        for name in layers:
            overrides: dict[str, Any] | None = {}
            for pattern, rule in dynamic.items():
                if pattern.startswith("-:"):
                    if re.match(pattern[2:], name):
                        overrides = None
                        break
                elif re.match(pattern.removeprefix("+:"), name):
                    overrides = rule
                    break
            if overrides is None:
                result[name] = None
                continue
            bits = overrides.get("bits", body["bits"])
            group = overrides.get("group_size", body["group_size"])
            result[name] = {
                "bits": bits,
                "symmetric": overrides.get("sym", body["sym"]),
                "strategy": "channel" if group == -1 else "group",
                "group_size": None if group == -1 else group,
            }
        return result


# ----------------------------------------------------------------------------------- llm-compressor
# compressed-tensors 0.20's preset weight schemes (quant_scheme.PRESET_SCHEMES), written out so the
# export needs no torch; the read-back validates them with compressed-tensors' own classes.
_NVFP4 = {"num_bits": 4, "type": "float", "symmetric": True, "group_size": 16, "strategy": "tensor_group",
          "dynamic": False, "scale_dtype": "torch.float8_e4m3fn"}
_NVFP4_INPUT = {**_NVFP4, "dynamic": "local", "observer": "static_minmax"}
_MX = {"num_bits": 4, "type": "float", "symmetric": True, "group_size": 32, "strategy": "group", "dynamic": False,
       "scale_dtype": "torch.uint8"}
# bitplan MX element -> (compressed-tensors bits, its format); CT's 6-bit float is E2M3, its 8-bit E4M3
_MX_ELEMENTS = {"e2m1": (4, "mxfp4-pack-quantized"), "e2m3": (6, "mxfp6-pack-quantized"),
                "e4m3": (8, "mxfp8-quantized")}
_TOKEN_INPUT = {"num_bits": 8, "symmetric": True, "group_size": None, "strategy": "token", "dynamic": True}


def _ct_scheme(layer: ExportLayer) -> dict[str, Any] | None:
    """The compressed-tensors scheme (weights, input_activations, format) of a layer; None for
    layers kept in 16 bits; ExportError naming the layer, its format and why otherwise."""
    s = weight_settings(layer.candidate)
    if s is None or s["format"] in ("fp16", "bf16"):
        return None
    fmt = s["format"]

    def refuse(why: str) -> ExportError:
        return ExportError(f"llmcompressor: layer {layer.name!r} is {layer.candidate} ({describe(s)}); {why}")

    if fmt == "int":
        weights = {"num_bits": s["bits"], "type": "int", "symmetric": s["symmetric"], "strategy": s["strategy"],
                   "group_size": s["group_size"], "dynamic": False}
        form = "pack-quantized"
    elif fmt == "float":
        if s["element"] != "e4m3":
            raise refuse("compressed-tensors' scaled floats are FP8 E4M3 only (float8_e4m3fn); 4-bit floats are"
                         " written as nvfp4 or mxfp4, 6-bit as mxfp6_e2m3")
        weights = {"num_bits": 8, "type": "float", "symmetric": True, "strategy": s["strategy"],
                   "group_size": s["group_size"], "dynamic": False}
        form = "float-quantized"
    elif fmt == "nvfp4":
        weights, form = dict(_NVFP4), "nvfp4-pack-quantized"
    elif fmt == "mx":
        if s["element"] not in _MX_ELEMENTS:
            raise refuse("compressed-tensors' MX schemes are MXFP4 (E2M1), MXFP6 (E2M3) and MXFP8 (E4M3)")
        bits, form = _MX_ELEMENTS[s["element"]]
        weights = {**_MX, "num_bits": bits}
    else:
        raise refuse("compressed-tensors has no scheme for it (GGML types are written by the llamacpp export)")
    inputs = None
    a_bits = s.get("activation_bits")
    if a_bits is not None:
        if a_bits == 8 and fmt == "int":
            inputs, form = {**_TOKEN_INPUT, "type": "int"}, "int-quantized"
        elif a_bits == 8 and fmt == "float":
            inputs = {**_TOKEN_INPUT, "type": "float"}
        elif a_bits == 4 and fmt == "nvfp4":
            inputs = dict(_NVFP4_INPUT)
        else:
            raise refuse(f"compressed-tensors has no {a_bits}-bit activation scheme for it (it pairs INT and FP8"
                         " weights with 8-bit dynamic per-token activations, NVFP4 with NVFP4)")
    return {"weights": weights, "input_activations": inputs, "format": form}


class LlmCompressor(Exporter):
    name = "llmcompressor"
    description = (
        "llm-compressor / compressed-tensors QuantizationConfig: one config group per format (INT, FP8 E4M3,"
        " NVFP4, MXFP4/6/8; W8A8 pairs), targets = module names; `ignore` = float and non-Linear layers"
    )

    def export(self, plan: ExportPlan) -> Export:
        groups: dict[str, dict[str, Any]] = {}
        by_candidate: dict[str, list[str]] = {}
        schemes: dict[str, dict[str, Any]] = {}
        ignore: list[str] = []
        warnings: list[str] = []
        for layer in plan.layers:
            if layer.kind != "linear" and _quantized(layer):
                # vLLM's compressed-tensors loader quantizes Linear layers (not embeddings)
                warnings.append(_kept_16_bit("llmcompressor", layer, "vLLM quantizes Linear layers only"))
                ignore.extend(_names(layer))
                continue
            scheme = _ct_scheme(layer)
            if scheme is None:
                ignore.extend(_names(layer))
                continue
            schemes[layer.candidate] = scheme
            by_candidate.setdefault(layer.candidate, []).extend(_names(layer))
            if scheme["weights"]["type"] == "int" and not scheme["weights"]["symmetric"]:
                warnings.append(
                    f"llmcompressor: layer {layer.name!r} is {layer.candidate}: compressed-tensors stores an integer"
                    " zero point where bitplan's format keeps an FP16 offset, so its rounding can differ slightly"
                )
        if not by_candidate:
            raise ExportError("llmcompressor: the plan quantizes no Linear layer")
        for i, (candidate, names) in enumerate(sorted(by_candidate.items())):
            scheme = schemes[candidate]
            groups[f"group_{i}"] = {
                "targets": names,
                "weights": scheme["weights"],
                "input_activations": scheme["input_activations"],
                "output_activations": None,
                "format": scheme["format"],
            }
        formats = {g["format"] for g in groups.values()}
        body = {
            "quant_method": "compressed-tensors",
            "format": "mixed-precision" if len(groups) > 1 else formats.pop(),
            "quantization_status": "initialized",
            "config_groups": groups,
            "ignore": ignore,
        }
        return Export(_dump(body), _JSON, "quantization_config.json", tuple(warnings))

    @staticmethod
    def validator_available() -> bool:
        return importlib.util.find_spec("compressed_tensors") is not None

    def read(self, content: bytes, layers: Sequence[str] = ()) -> dict[str, dict[str, Any] | None]:
        """Validated by compressed-tensors' own pydantic QuantizationConfig when it is installed;
        a target matches a module by exact name or, with a "re:" prefix, by re.match."""
        body = _load(content, "llmcompressor")
        if self.validator_available():
            from compressed_tensors.quantization import QuantizationConfig
            from pydantic import ValidationError

            try:
                body = QuantizationConfig.model_validate(body).model_dump(mode="json")
            except ValidationError as exc:
                raise ExportError(f"llmcompressor: compressed-tensors rejects the config ({exc})") from exc
        groups = body.get("config_groups")
        if not isinstance(groups, dict) or not groups:
            raise ExportError("llmcompressor: config_groups must be a non-empty object")
        ignore = body.get("ignore") or []
        names = list(layers) or [t for g in groups.values() for t in g["targets"]] + list(ignore)

        def matches(target: str, name: str) -> bool:
            return bool(re.match(target[3:], name)) if target.startswith("re:") else target == name

        result: dict[str, dict[str, Any] | None] = {}
        for name in names:
            if any(matches(t, name) for t in ignore):
                result[name] = None
                continue
            found = [g for g in groups.values() if any(matches(t, name) for t in g["targets"])]
            if len(found) > 1:
                raise ExportError(f"llmcompressor: layer {name!r} is targeted by {len(found)} groups")
            if not found:
                result[name] = None
                continue
            w, inputs = found[0]["weights"], found[0].get("input_activations")
            result[name] = {
                "bits": w["num_bits"],
                "type": w.get("type", "int"),
                "symmetric": w["symmetric"],
                "strategy": w["strategy"],
                "group_size": w.get("group_size"),
                "scale_dtype": w.get("scale_dtype"),
                "activation_bits": inputs["num_bits"] if inputs else None,
            }
        return result


# --------------------------------------------------------------------------------------------- NNCF
_NNCF_OPS = {
    "linear": ("NNCFLinear", "linear"),
    "conv1d": ("NNCFConv1d", "conv1d"),
    "conv2d": ("NNCFConv2d", "conv2d"),
    "embedding": ("NNCFEmbedding", "embedding"),
}
_SCOPE = re.compile(r"^(?:TargetType\.OPERATION_WITH_WEIGHTS )?[^/\[\]]+((?:/[^/\[\]]+\[[^\[\]]+\])+)/\w+_\d+\|WEIGHT$")


class NncfBitwidthPerScope(Exporter):
    name = "nncf"
    description = (
        "NNCF quantization config with a manual precision initializer: bitwidth_per_scope = [[bits, scope], ...]"
    )

    def _scope(self, plan: ExportPlan, layer) -> str:
        nncf_type, op = _NNCF_OPS[layer.kind]
        parts = layer.name.split(".")
        path = []
        for i, part in enumerate(parts[:-1]):
            prefix = ".".join(parts[: i + 1])
            path.append(f"{plan.module_types.get(prefix, 'Module')}[{part}]")
        path.append(f"{nncf_type}[{parts[-1]}]")
        return f"{plan.root_type}/{'/'.join(path)}/{op}_0|WEIGHT"

    def export(self, plan: ExportPlan) -> Export:
        pairs, warnings = [], []
        schemes: dict[tuple, ExportLayer] = {}  # scheme -> first layer with it
        unknown_types = False
        for layer in plan.layers:
            s = integer_settings("nncf", layer)
            if s is None:
                continue
            schemes.setdefault((s["symmetric"], s["strategy"], s["group_size"]), layer)
            pairs.append([s["bits"], self._scope(plan, layer)])
            unknown_types |= any(
                ".".join(layer.name.split(".")[: i + 1]) not in plan.module_types
                for i in range(len(layer.name.split(".")) - 1)
            )
        if not pairs:
            raise ExportError("nncf: the plan quantizes no layer")
        if len(schemes) > 1:
            a, b = list(schemes.values())[:2]
            raise ExportError(
                f"nncf: layers {a.name!r} ({a.candidate}) and {b.name!r} ({b.candidate}) differ in symmetry or"
                f" granularity ({len(schemes)} schemes); bitwidth_per_scope sets bits only, under one NNCF weights"
                " config"
            )
        (symmetric, strategy, group), first = next(iter(schemes.items()))
        if strategy == "group":
            raise ExportError(f"nncf: layer {first.name!r} is {first.candidate} (group-wise); NNCF's weights config"
                              " is per channel or per tensor")
        if unknown_types:
            warnings.append("nncf: classes of intermediate modules unknown; scopes name them 'Module'")
        skipped = [layer.name for layer in plan.layers if integer_settings("nncf", layer) is None]
        body = {
            "compression": {
                "algorithm": "quantization",
                "weights": {"mode": "symmetric" if symmetric else "asymmetric", "per_channel": strategy == "channel"},
                "initializer": {"precision": {"type": "manual", "bitwidth_per_scope": pairs}},
                "ignored_scopes": [f"{{re}}.*\\[{re.escape(n.split('.')[-1])}\\].*" for n in skipped],
            }
        }
        return Export(_dump(body), _JSON, "nncf_config.json", tuple(warnings))

    def read(self, content: bytes, layers: Sequence[str] = ()) -> dict[str, dict[str, Any] | None]:
        """The schema NNCF 2.x validates (array of [number, string] pairs) and the scope grammar
        `Root/Type[name]/.../op_N|WEIGHT`; layer names are the bracketed parts joined by dots."""
        body = _load(content, "nncf")
        try:
            comp = body["compression"]
            pairs = comp["initializer"]["precision"]["bitwidth_per_scope"]
            mode = comp["weights"]["mode"]
            per_channel = comp["weights"]["per_channel"]
        except (KeyError, TypeError) as exc:
            raise ExportError(f"nncf: missing {exc}") from exc
        if comp.get("algorithm") != "quantization" or comp["initializer"]["precision"].get("type") != "manual":
            raise ExportError("nncf: expected algorithm quantization with a manual precision initializer")
        result: dict[str, dict[str, Any] | None] = {name: None for name in layers}
        for i, pair in enumerate(pairs):
            if (
                not isinstance(pair, list)
                or len(pair) != 2
                or isinstance(pair[0], bool)
                or not isinstance(pair[0], int)
                or not isinstance(pair[1], str)
            ):
                raise ExportError(f"nncf: bitwidth_per_scope[{i}] must be [bits, scope]")
            m = _SCOPE.match(pair[1])
            if m is None:
                raise ExportError(f"nncf: bitwidth_per_scope[{i}] scope {pair[1]!r} is not a weight scope")
            name = ".".join(re.findall(r"\[([^\[\]]+)\]", m.group(1)))
            result[name] = {
                "bits": pair[0],
                "symmetric": mode == "symmetric",
                "strategy": "channel" if per_channel else "tensor",
                "group_size": None,
            }
        return result


# --------------------------------------------------------------------------------------------- HAWQ
class HawqBitConfig(Exporter):
    name = "hawq"
    description = "HAWQ bit_config: {layer: weight bits} (HAWQ quantizes weights symmetric per channel)"

    def export(self, plan: ExportPlan) -> Export:
        config, warnings = {}, []
        for layer in plan.layers:
            s = integer_settings("hawq", layer)
            if s is None:
                continue
            config[layer.name] = s["bits"]
            if not s["symmetric"] or s["strategy"] != "channel":
                warnings.append(
                    f"hawq: layer {layer.name!r} is {layer.candidate}; HAWQ will store it symmetric per channel"
                )
        if not config:
            raise ExportError("hawq: the plan quantizes no layer")
        return Export(_dump(config), _JSON, "bit_config.json", tuple(warnings))

    def read(self, content: bytes, layers: Sequence[str] = ()) -> dict[str, dict[str, Any] | None]:
        body = _load(content, "hawq")
        if not isinstance(body, Mapping) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 32 for v in body.values()
        ):
            raise ExportError("hawq: bit_config must map layer names to integer bits")
        result: dict[str, dict[str, Any] | None] = {name: None for name in layers}
        for name, bits in body.items():
            result[name] = {"bits": bits, "symmetric": True, "strategy": "channel", "group_size": None}
        return result
