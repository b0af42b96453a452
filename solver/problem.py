"""The solver's input: decision units, their candidate options, and the rules that bind them.

This is the contract between the sensitivity side (which fills it) and every solver back-end
(which only reads it). It is plain data so it round-trips through JSON (docs/problem-format.md)
and users can bring their own table with no model at all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from solver.errors import ProblemError

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Option:
    """One candidate format for one unit: its predicted damage and what it costs."""

    candidate: str
    damage: float
    costs: Mapping[str, float]


@dataclass(frozen=True)
class Unit:
    """A decision unit (a layer, or a group of layers that move together).

    `weights` counts the unit's quantizable parameters; it turns an average-bits budget into bytes.
    """

    name: str
    weights: int
    options: tuple[Option, ...]

    def option(self, candidate: str) -> Option:
        for opt in self.options:
            if opt.candidate == candidate:
                return opt
        raise KeyError(f"unit {self.name!r} has no candidate {candidate!r}")


@dataclass(frozen=True)
class Problem:
    """Units × options plus constraints that every feasible plan must respect.

    ties: groups of unit names that must all take the same candidate.
    pins: unit name → the only candidate it may take.
    allowed: unit name → the subset of candidates it may take.
    """

    units: tuple[Unit, ...]
    ties: tuple[tuple[str, ...], ...] = ()
    pins: Mapping[str, str] = field(default_factory=dict)
    allowed: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def total_weights(self) -> int:
        return sum(u.weights for u in self.units)

    @property
    def cost_names(self) -> tuple[str, ...]:
        names: set[str] = set()
        for unit in self.units:
            for opt in unit.options:
                names.update(opt.costs)
        return tuple(sorted(names))

    def unit(self, name: str) -> Unit:
        for unit in self.units:
            if unit.name == name:
                return unit
        raise KeyError(f"no unit named {name!r}")

    def permitted(self, unit: Unit) -> tuple[Option, ...]:
        """Options of `unit` that its pin and allowed-subset leave open."""
        opts = unit.options
        if unit.name in self.pins:
            opts = tuple(o for o in opts if o.candidate == self.pins[unit.name])
        if unit.name in self.allowed:
            keep = self.allowed[unit.name]
            opts = tuple(o for o in opts if o.candidate in keep)
        return opts


@dataclass(frozen=True)
class Budget:
    """An upper limit on one named cost, summed over units (e.g. bytes ≤ 1e6)."""

    cost: str
    limit: float

    def __post_init__(self) -> None:
        if not self.cost:
            raise ValueError("budget cost name must not be empty")
        if not math.isfinite(self.limit) or self.limit < 0:
            raise ValueError(f"budget limit for {self.cost!r} must be a finite number ≥ 0, got {self.limit}")


def average_bits_budget(problem: Problem, bits: float) -> Budget:
    """A bytes budget equal to `bits` per quantizable weight on average (scale overhead included)."""
    if not math.isfinite(bits) or bits <= 0:
        raise ValueError(f"average bits must be a positive number, got {bits}")
    return Budget("bytes", bits * problem.total_weights / 8.0)


def _validate(problem: Problem) -> None:
    names = [u.name for u in problem.units]
    if not names:
        raise ProblemError("problem has no units")
    seen: set[str] = set()
    for unit in problem.units:
        if unit.name in seen:
            raise ProblemError(f"unit name {unit.name!r} appears twice")
        seen.add(unit.name)
        if unit.weights < 0:
            raise ProblemError(f"unit {unit.name!r}: weights must be ≥ 0")
        if not unit.options:
            raise ProblemError(f"unit {unit.name!r} has no options")
        cands = [o.candidate for o in unit.options]
        if len(set(cands)) != len(cands):
            raise ProblemError(f"unit {unit.name!r} lists a candidate twice")
        for opt in unit.options:
            if not math.isfinite(opt.damage):
                raise ProblemError(f"unit {unit.name!r} candidate {opt.candidate!r}: damage is not finite")
            for cost, value in opt.costs.items():
                if not math.isfinite(value) or value < 0:
                    raise ProblemError(
                        f"unit {unit.name!r} candidate {opt.candidate!r}: cost {cost!r} must be finite and ≥ 0"
                    )
    for group in problem.ties:
        for name in group:
            if name not in seen:
                raise ProblemError(f"tie names unknown unit {name!r}")
    for name, cand in problem.pins.items():
        if name not in seen:
            raise ProblemError(f"pin names unknown unit {name!r}")
    for name in problem.allowed:
        if name not in seen:
            raise ProblemError(f"allowed-subset names unknown unit {name!r}")
    for unit in problem.units:
        if not problem.permitted(unit):
            raise ProblemError(f"unit {unit.name!r}: its pin / allowed subset leaves no candidate")


def problem_from_dict(data: Mapping[str, Any]) -> Problem:
    """Parse the JSON problem format; raises ProblemError naming the offending field."""
    if not isinstance(data, Mapping):
        raise ProblemError("problem must be a JSON object")
    version = data.get("version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise ProblemError(f"version: unsupported problem format version {version!r}")
    raw_units = data.get("units")
    if not isinstance(raw_units, list):
        raise ProblemError("units: must be a list")
    units = []
    for i, ru in enumerate(raw_units):
        where = f"units[{i}]"
        try:
            options = tuple(
                Option(
                    candidate=str(ro["candidate"]),
                    damage=float(ro["damage"]),
                    costs={str(k): float(v) for k, v in dict(ro.get("costs", {})).items()},
                )
                for ro in ru["options"]
            )
            units.append(Unit(name=str(ru["name"]), weights=int(ru.get("weights", 0)), options=options))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProblemError(f"{where}: malformed unit ({exc})") from exc
    try:
        ties = tuple(tuple(str(n) for n in group) for group in data.get("ties", []))
        pins = {str(k): str(v) for k, v in dict(data.get("pins", {})).items()}
        allowed = {str(k): frozenset(str(c) for c in v) for k, v in dict(data.get("allowed", {})).items()}
    except (TypeError, ValueError) as exc:
        raise ProblemError(f"ties/pins/allowed: malformed ({exc})") from exc
    return Problem(units=tuple(units), ties=ties, pins=pins, allowed=allowed)


def problem_to_dict(problem: Problem) -> dict[str, Any]:
    return {
        "version": FORMAT_VERSION,
        "units": [
            {
                "name": u.name,
                "weights": u.weights,
                "options": [
                    {"candidate": o.candidate, "damage": o.damage, "costs": dict(o.costs)} for o in u.options
                ],
            }
            for u in problem.units
        ],
        "ties": [list(g) for g in problem.ties],
        "pins": dict(problem.pins),
        "allowed": {k: sorted(v) for k, v in problem.allowed.items()},
    }
