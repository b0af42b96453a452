"""The one registry of format families (solver.registry's shape); candidate names are parsed by
asking each available family in turn, in registration order. A name only an unavailable family
knows is refused saying what that family needs, not as an unknown format.

An "_a<bits>" suffix (activation width, 2..16) is split off here, before any family sees the
name, so every family's formats can be paired with an activation width the same way.
"""

from __future__ import annotations

from collections.abc import Iterable

from solver.registry import Registry
from workers.quantizers._activations import (
    DEFAULT_ACTIVATION_BITS,
    MAX_ACTIVATION_BITS,
    MIN_ACTIVATION_BITS,
    SUFFIX,
    WithActivations,
)
from workers.quantizers._base import Family, Quantizer

# Imported on first use so building the registry costs nothing at import.
FAMILIES: Registry[Family] = Registry(
    "family",
    {
        "integer": "workers.quantizers._integer:IntegerFamily",
        "float": "workers.quantizers._float:FloatFamily",
        "mx": "workers.quantizers._mx:MXFamily",
        "nvfp4": "workers.quantizers._nvfp4:NVFP4Family",
        "half": "workers.quantizers._half:HalfFamily",
        "gguf": "workers.quantizers._gguf:GGUFFamily",
    },
    requires={"gguf": "the gguf package (pip install gguf)"},
)

DEFAULT_CANDIDATES: tuple[str, ...] = ("int2", "int3", "int4", "int6", "int8")

_ACTIVATION_GRAMMAR = (
    f"any of the above + _a<bits> (activation width {MIN_ACTIVATION_BITS}..{MAX_ACTIVATION_BITS}, for BOPs and"
    f" latency; without it activations are {DEFAULT_ACTIVATION_BITS}-bit, i.e. weight-only; e.g. int8_a8, mxfp4_a8)"
)


def families() -> dict[str, Family]:
    """Every registered family whose optional dependencies are installed, by name."""
    return FAMILIES.entries()


def candidate_grammar() -> str:
    """One line per family (an unavailable one says why), then the activation suffix."""
    lines = []
    for name in FAMILIES.names():
        state = FAMILIES.available(name)
        says = FAMILIES.get(name).grammar if state else f"not available here ({state.reason})"
        lines.append(f"- {name}: {says}")
    return "\n".join([*lines, f"- W/A pairs: {_ACTIVATION_GRAMMAR}"])


def parse_candidate(name: str) -> Quantizer:
    """The format a candidate name denotes; ValueError listing the grammar when no family knows it."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"candidate: must be a non-empty string, got {name!r}")
    m = SUFFIX.match(name)
    if m is not None:
        bits_text = m.group("bits")
        bits = int(bits_text)
        if bits_text != str(bits) or not MIN_ACTIVATION_BITS <= bits <= MAX_ACTIVATION_BITS:
            raise ValueError(
                f"candidate {name!r}: activation bits must be {MIN_ACTIVATION_BITS}..{MAX_ACTIVATION_BITS}"
            )
        base = _parse_weight_format(m.group("base"), name)
        if bits == DEFAULT_ACTIVATION_BITS:
            raise ValueError(f"candidate {name!r}: write it as {base.name!r} ({bits}-bit activations are the default)")
        return WithActivations(base, bits)
    return _parse_weight_format(name, name)


def _parse_weight_format(name: str, full: str) -> Quantizer:
    for family in families().values():
        quantizer = family.parse(name)
        if quantizer is not None:
            if quantizer.name != name:  # one spelling per format keeps table keys unique
                raise ValueError(f"candidate {full!r}: write it as {full.replace(name, quantizer.name, 1)!r}")
            return quantizer
    for family_name in FAMILIES.names():  # parsing is pure, so an unavailable family can still claim it
        state = FAMILIES.available(family_name)  # loads the family, so peek finds it
        if not state and _claims(FAMILIES.peek(family_name), name):
            why = state.reason
            raise ValueError(f"candidate {full!r}: the {family_name} family is not available here ({why})")
    raise ValueError(f"candidate {full!r}: unknown format; valid names:\n{candidate_grammar()}")


def _claims(family: Family, name: str) -> bool:
    try:
        return family.parse(name) is not None
    except ValueError:
        return True  # its own name, but invalid: still the family's


def parse_candidates(names: Iterable[str]) -> list[Quantizer]:
    """Parse a candidate list, rejecting an empty list and duplicates."""
    if isinstance(names, str):
        raise ValueError("candidates: must be a list of names, not one string")
    result = [parse_candidate(n) for n in names]
    if not result:
        raise ValueError("candidates: must name at least one format")
    seen: set[str] = set()
    for q in result:
        if q.name in seen:
            raise ValueError(f"candidates: {q.name!r} appears twice")
        seen.add(q.name)
    return result
