"""The plug-in point for export formats and the plan they all read."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from workers.errors import WorkersError
from workers.table import layer_formats


class ExportError(WorkersError, ValueError):
    """The plan cannot be written in the requested format without changing it (a bit width or
    granularity the format has no way to say, a layer kind it does not quantize), or exported
    content does not read back as that format."""


@dataclass(frozen=True)
class ExportLayer:
    """One layer of the model: its name (module path), kind, weight shape and chosen candidate
    (None: the plan leaves it float); `shared_with` names the other modules using the same weight
    (a tied LM head), which every format must give the same format."""

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    candidate: str | None
    shared_with: tuple[str, ...] = ()

    @property
    def quantizer(self):
        from workers.quantizers import parse_candidate

        return None if self.candidate is None else parse_candidate(self.candidate)


@dataclass(frozen=True)
class ExportPlan:
    """What every exporter reads: the layers with their formats, plus where the model lives (only
    the checkpoint exporter opens it) and, for formats that name modules by class (NNCF scopes),
    the class of the root module and of named submodules when known."""

    layers: tuple[ExportLayer, ...]
    model: Mapping[str, Any] | None = None
    root_type: str = "Model"
    module_types: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_table(cls, table: Mapping[str, Any], plan: Mapping[str, str], **kwargs: Any) -> ExportPlan:
        """Layers in the table's order, each with the candidate of its unit in `plan` (unit →
        candidate, spelled out by the table's `groups`: `workers.table.layer_formats`); a layer
        the plan omits stays float. Plan keys that are not units of the table are a ValueError."""
        assignment = layer_formats(plan, table.get("groups"))
        names = [row["name"] for row in table["layers"]]
        unknown = sorted(set(assignment) - set(names))
        if unknown:
            raise ValueError(f"assignment: layer {unknown[0]!r} is not in the analysis table")
        layers = tuple(
            ExportLayer(row["name"], row["kind"], tuple(int(s) for s in row["weight_shape"]), assignment.get(row["name"]),
                        tuple(row.get("shared_with") or ()))
            for row in table["layers"]
        )
        return cls(layers=layers, **kwargs)

    @property
    def assignment(self) -> dict[str, str]:
        return {layer.name: layer.candidate for layer in self.layers if layer.candidate is not None}


@dataclass(frozen=True)
class Export:
    """Exported bytes with their media type and a file name; `warnings` say what the format could
    not express exactly (never silent)."""

    content: bytes
    media_type: str
    filename: str
    warnings: tuple[str, ...] = ()


class Exporter(ABC):
    """One export format.

    Rules: stateless and thread-safe; `export` is pure (same plan, same bytes: keys sorted, no
    timestamps) and raises `ExportError` naming the layer, its format and why when the plan cannot be
    written faithfully; what the engine itself keeps in 16 bits (embeddings for GPTQ / vLLM) is
    exported that way with a warning saying so. `read` parses exported content back into per-layer
    settings as the format states them ("bits", "symmetric", "group_size", "strategy" for the config
    formats, {"tensor", "ggml_type"} for llama.cpp; None for layers left float / skipped), validating
    it with the target library's own schema or name map when that library is installed. `available()` is False when a library the export itself needs is missing;
    it never raises. `needs_model`: export opens the model (torch), so run it in a job process.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    needs_model: ClassVar[bool] = False

    def available(self) -> bool:
        return True

    @abstractmethod
    def export(self, plan: ExportPlan) -> Export:
        """The plan in this format."""

    def write(self, plan: ExportPlan, path: str, report: Callable[[float, str], None] | None = None) -> Export:
        """The export written to the file `path` (what an export job runs), its Export without the
        content; formats that build large files override it to stream and to report progress."""
        exported = self.export(plan)
        with open(path, "wb") as f:
            f.write(exported.content)
        return Export(b"", exported.media_type, exported.filename, exported.warnings)

    @abstractmethod
    def read(self, content: bytes, layers: Sequence[str] = ()) -> dict[str, dict[str, Any] | None]:
        """Exported content back to per-layer weight settings for the modules named in `layers`
        (plus any the content names), the way the engine that reads the format resolves them."""


def weight_settings(candidate: str | None) -> dict[str, Any] | None:
    """What a candidate stores, in the words the config formats use: `format` (int, float, mx,
    nvfp4, gguf, fp16, bf16), `bits`, `symmetric`, `strategy` (tensor, channel, group,
    tensor_group, block), `group_size`, plus `element` (float formats), `ggml_type` (GGUF) and
    `activation_bits` (W/A pairs). None for a layer left float."""
    if candidate is None:
        return None
    from workers.quantizers import parse_candidate

    q = parse_candidate(candidate)
    base = getattr(q, "base", q)  # W/A pairs wrap a weight format
    family = base.family
    out: dict[str, Any] = {"format": family, "bits": base.weight_bits, "symmetric": True, "strategy": "channel",
                           "group_size": None}
    if family == "integer":
        out.update(format="int", symmetric=base.symmetric, strategy=base.granularity, group_size=base.group_size)
    elif family == "float":
        out.update(element=base.element, strategy=base.granularity, group_size=base.group_size)
    elif family == "mx":
        out.update(element=base.element, strategy="group", group_size=32)
    elif family == "nvfp4":
        out.update(element="e2m1", strategy="tensor_group", group_size=16)
    elif family == "gguf":
        from workers.quantizers._gguf import TYPES

        out.update(ggml_type=base.ggml_type, symmetric=None, strategy="block", group_size=TYPES[base.ggml_type][0])
    elif family == "half":
        out.update(format=base.name, symmetric=None, strategy=None)
    if q.activation_bits != 16:
        out["activation_bits"] = q.activation_bits
    return out


def integer_settings(target: str, layer: ExportLayer) -> dict[str, Any] | None:
    """The integer settings of a layer for formats that store integer weights only; None for layers
    kept in 16 bits (float, fp16, bf16); ExportError naming the layer and its format otherwise."""
    s = weight_settings(layer.candidate)
    if s is None or s["format"] in ("fp16", "bf16"):
        return None
    if s["format"] != "int":
        raise ExportError(
            f"{target}: layer {layer.name!r} is {layer.candidate} ({describe(s)}); {target} stores integer weights"
            " only (int2..int8)"
        )
    if "activation_bits" in s:
        raise ExportError(
            f"{target}: layer {layer.name!r} is {layer.candidate}; {target} has no activation quantization"
            f" (write it as {layer.candidate.rsplit('_a', 1)[0]!r} for weight-only)"
        )
    return s


def describe(settings: dict[str, Any]) -> str:
    """A few words on a format for refusals: "GGML Q4_K", "FP8 e4m3 per channel", ..."""
    fmt = settings["format"]
    if fmt == "gguf":
        return f"GGML {settings['ggml_type']}, a llama.cpp block format"
    if fmt in ("fp16", "bf16"):
        return f"{fmt} (not quantized)"
    where = {"tensor": "per tensor", "channel": "per channel", "block": "in blocks"}.get(
        settings["strategy"], f"in groups of {settings['group_size']}")
    name = {"int": f"INT{settings['bits']}", "float": f"FP{settings['bits']} {settings.get('element')}",
            "mx": f"OCP MX FP{settings['bits']} {settings.get('element')}", "nvfp4": "NVFP4 (E2M1)"}.get(fmt, fmt)
    return f"{name} {where}"
