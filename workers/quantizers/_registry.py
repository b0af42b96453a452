"""The one registry of format families; candidate names are parsed by asking each family in turn."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from functools import cache

from workers.quantizers._base import Family, Quantizer

# family name -> "module:class"; imported on first use so registering costs nothing at import.
_FAMILIES: dict[str, str] = {
    "integer": "workers.quantizers._integer:IntegerFamily",
}

DEFAULT_CANDIDATES: tuple[str, ...] = ("int2", "int3", "int4", "int6", "int8")


@cache
def families() -> dict[str, Family]:
    """Every registered family whose optional dependencies are installed, by name."""
    found: dict[str, Family] = {}
    for name, target in _FAMILIES.items():
        module, cls = target.split(":")
        family = getattr(importlib.import_module(module), cls)()
        if family.available():
            found[name] = family
    return found


def candidate_grammar() -> str:
    """One line per available family: the candidate names it accepts."""
    return "\n".join(f"- {name}: {fam.grammar}" for name, fam in families().items())


def parse_candidate(name: str) -> Quantizer:
    """The format a candidate name denotes; ValueError listing the grammar when no family knows it."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"candidate: must be a non-empty string, got {name!r}")
    for family in families().values():
        quantizer = family.parse(name)
        if quantizer is not None:
            if quantizer.name != name:  # one spelling per format keeps table keys unique
                raise ValueError(f"candidate {name!r}: write it as {quantizer.name!r}")
            return quantizer
    raise ValueError(f"candidate {name!r}: unknown format; valid names:\n{candidate_grammar()}")


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
