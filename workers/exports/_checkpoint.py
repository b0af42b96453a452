"""A fake-quantized safetensors checkpoint: the model's state dict with every planned weight
replaced by its dequantized round trip (float32), and the plan in the file's metadata.

Needs torch and the model file, so callers in the API process run it in a job process. It is the
same size as the float model; the point is that any loader reproduces exactly what was evaluated.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from typing import Any

from workers.exports._base import Export, ExportError, Exporter, ExportPlan, weight_settings


class FakeQuantCheckpoint(Exporter):
    name = "safetensors"
    description = "fake-quantized safetensors checkpoint (dequantized weights; plan in the metadata)"
    needs_model = True

    def available(self) -> bool:
        return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("safetensors") is not None

    def export(self, plan: ExportPlan) -> Export:
        if plan.model is None:
            raise ExportError("safetensors: the plan carries no model to quantize")
        from safetensors.torch import save

        from workers.evaluation import apply_plan
        from workers.models import load_model

        model = apply_plan(load_model(plan.model), plan.assignment, inplace=True)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        metadata = {"format": "pt", "bitplan_plan": json.dumps(plan.assignment, sort_keys=True)}
        return Export(save(state, metadata=metadata), "application/octet-stream", "model.fakequant.safetensors")

    def read(self, content: bytes, layers: Sequence[str] = ()) -> dict[str, dict[str, Any] | None]:
        """safetensors' own parser; the plan comes back from the metadata."""
        from safetensors import safe_open  # noqa: F401 - parser availability
        from safetensors.torch import load

        load(content)  # every tensor parses
        header_len = int.from_bytes(content[:8], "little")
        header = json.loads(content[8 : 8 + header_len])
        plan = json.loads(header.get("__metadata__", {}).get("bitplan_plan", "{}"))
        result: dict[str, dict[str, Any] | None] = {name: None for name in layers}
        for name, candidate in plan.items():
            result[name] = weight_settings(candidate)
        return result
