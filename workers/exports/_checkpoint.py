"""A fake-quantized safetensors checkpoint: the model's state dict with every planned weight
replaced by its dequantized round trip (float32), and the plan in the file's metadata. Every
format a plan can hold can be written this way (it is the evaluation's own round trip); a tied
weight is stored once, with the tie in the metadata (`bitplan_tied`: {dropped name: kept name}).

Needs torch and the model file, so callers in the API process run it in a job process. It is the
same size as the float model; the point is that any loader reproduces exactly what was evaluated.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from workers.exports._base import Export, ExportError, Exporter, ExportPlan, weight_settings


def untie(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Each shared tensor once, under its first name, and {dropped name: kept name}.

    safetensors refuses tensors that share memory (a tied embedding / LM head); like transformers'
    save_pretrained it stores the tensor once, and loaders re-tie it (transformers does so from the
    config's tie_word_embeddings; the map in the metadata says it for any other loader)."""
    kept: dict[Any, str] = {}
    out: dict[str, Any] = {}
    tied: dict[str, str] = {}
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride())) if tensor.numel() else None
        if key is not None and key in kept:
            tied[name] = kept[key]
            continue
        if key is not None:
            kept[key] = name
        out[name] = tensor.detach().contiguous()
    return out, tied


def _canonical_header(header: bytes) -> bytes:
    """The same JSON header with its keys sorted, padded like safetensors pads (spaces to 8 bytes).

    safetensors writes `__metadata__` from a hash map, so the same checkpoint came out with its
    metadata keys in a different order on every write; sorted, equal exports are equal bytes."""
    text = json.dumps(json.loads(header), sort_keys=True, separators=(",", ":")).encode()
    return text + b" " * (-len(text) % 8)


def deterministic(content: bytes) -> bytes:
    """A safetensors file's bytes with its header canonical (`_canonical_header`)."""
    size = int.from_bytes(content[:8], "little")
    header = _canonical_header(content[8 : 8 + size])
    return len(header).to_bytes(8, "little") + header + content[8 + size :]


def make_deterministic(path: str) -> None:
    """`deterministic` in place: the header is rewritten where it stands when its length is unchanged
    (it always is: the same compact JSON, reordered), else the file is copied once."""
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = _canonical_header(f.read(size))
        if len(header) == size:
            f.seek(8)
            f.write(header)
            return
    data = Path(path).read_bytes()
    Path(path).write_bytes(deterministic(data))


class FakeQuantCheckpoint(Exporter):
    name = "safetensors"
    description = "fake-quantized safetensors checkpoint (dequantized weights; plan in the metadata)"
    needs_model = True

    def available(self) -> bool:
        return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("safetensors") is not None

    filename = "model.fakequant.safetensors"
    media_type = "application/octet-stream"

    def export(self, plan: ExportPlan) -> Export:
        from safetensors.torch import save

        state, metadata = self.build(plan)
        return Export(deterministic(save(state, metadata=metadata)), self.media_type, self.filename)

    def write(self, plan: ExportPlan, path: str, report: Callable[[float, str], None] | None = None) -> Export:
        """The checkpoint written straight to `path` (no second copy in memory), with progress per
        layer; what the export job runs. The returned Export carries no content."""
        from safetensors.torch import save_file

        state, metadata = self.build(plan, report)
        if report is not None:
            report(0.95, "writing the checkpoint")
        save_file(state, path, metadata=metadata)
        make_deterministic(path)
        return Export(b"", self.media_type, self.filename)

    def build(self, plan: ExportPlan, report: Callable[[float, str], None] | None = None):
        """(state dict with planned weights fake-quantized and ties dropped, safetensors metadata)."""
        if plan.model is None:
            raise ExportError("safetensors: the plan carries no model to quantize")
        from workers.evaluation import apply_plan
        from workers.models import load_model

        if report is not None:
            report(0.02, "loading the model")
        per_layer = None if report is None else (lambda f, message: report(0.05 + 0.9 * f, message))
        model = apply_plan(load_model(plan.model), plan.assignment, inplace=True, report=per_layer)
        state, tied = untie(model.state_dict())
        metadata = {"format": "pt", "bitplan_plan": json.dumps(plan.assignment, sort_keys=True)}
        if tied:
            metadata["bitplan_tied"] = json.dumps(tied, sort_keys=True)
        return state, metadata

    def read(self, content: bytes, layers: Sequence[str] = ()) -> dict[str, dict[str, Any] | None]:
        """safetensors' own parser; the plan comes back from the metadata."""
        from safetensors import safe_open  # noqa: F401 - parser availability
        from safetensors.torch import load

        load(content)  # every tensor parses
        header_len = int.from_bytes(content[:8], "little")
        header = json.loads(content[8 : 8 + header_len])
        metadata = header.get("__metadata__", {})
        plan = json.loads(metadata.get("bitplan_plan", "{}"))
        missing = sorted(set(json.loads(metadata.get("bitplan_tied", "{}")).values()) - set(header))
        if missing:
            raise ExportError(f"safetensors: tied weight {missing[0]!r} is not in the file")
        result: dict[str, dict[str, Any] | None] = {name: None for name in layers}
        for name, candidate in plan.items():
            result[name] = weight_settings(candidate)
        return result
