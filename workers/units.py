"""Decision units and the rules that bind them: grouping layers, and ties found automatically.

Grouping (option `grouping`): "layer" (default) makes each quantizable weight its own unit;
"block" merges the layers of one repeated block, the name prefix up to its first all-digit
segment ("model.layers.3.self_attn.q_proj" → "model.layers.3"; layers outside blocks stay alone);
a list of name prefixes merges the layers starting with each prefix (first match wins). A merged
unit takes one candidate for all its layers; its damage and costs are the sums (the additive model
the per-layer metrics already assume).

Ties (option `ties`): "auto" ties linear layers that read the very same input tensor in the
traced forward pass: the projections an engine fuses into one GEMM (q/k/v of one attention block,
gate/up of one MLP; GPT-2's c_attn is already one weight). A data-flow rule rather than name
patterns, so it works for any naming; it would also tie parallel heads over one input, which are
fusable for the same reason. "none" emits no ties. Tied weights (one Parameter used by the
embedding and the LM head) are not a tie but a single unit (see workers.models.find_layers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["GROUPINGS", "TIE_MODES", "block_of", "group_layers", "validate_grouping", "validate_ties"]

GROUPINGS = ("layer", "block")
TIE_MODES = ("auto", "none")


def validate_grouping(value: Any) -> str | list[str]:
    if value is None:
        return "layer"
    if isinstance(value, str):
        if value not in GROUPINGS:
            raise ValueError(f"options.grouping: must be one of {', '.join(GROUPINGS)} or a list of name prefixes, got {value!r}")
        return value
    if isinstance(value, list | tuple) and value and all(isinstance(p, str) and p for p in value):
        return list(value)
    raise ValueError("options.grouping: must be 'layer', 'block' or a non-empty list of name prefixes")


def validate_ties(value: Any) -> str:
    if value is None:
        return "auto"
    if value not in TIE_MODES:
        raise ValueError(f"options.ties: must be one of {', '.join(TIE_MODES)}, got {value!r}")
    return value


def block_of(name: str) -> str | None:
    """The repeated block a layer belongs to: its name up to the first all-digit segment that has
    something after it; None for layers outside any numbered container."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return None


def group_layers(names: Sequence[str], grouping: str | list[str]) -> dict[str, list[str]]:
    """Unit name → its layer names, in first-appearance order; every layer in exactly one unit."""
    units: dict[str, list[str]] = {}
    for name in names:
        if grouping == "layer":
            unit = name
        elif grouping == "block":
            unit = block_of(name) or name
        else:
            unit = next((p.rstrip(".") for p in grouping if name.startswith(p)), name)
        units.setdefault(unit, []).append(name)
    clash = [u for u, members in units.items() if u in names and members != [u] and u not in members]
    if clash:
        raise ValueError(f"options.grouping: unit name {clash[0]!r} is also the name of another layer")
    return units
