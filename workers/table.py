"""The sensitivity table: per layer × candidate, predicted damage and cost, and the statistics behind it.

Plain data with a JSON form (`to_dict` / `from_dict`) so it can be stored, served and edited, and
`to_problem` turns it into the solver's input. Nothing here imports torch.

Backward compatible: the fields added with costs and units (`bops`, `latency_ms`, `macs`,
`shared_with`, `groups`, `ties`, `provenance`) are optional in `from_dict`, so tables stored
before them still parse (and give a problem with bytes only and no ties, as before).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from solver.problem import Option, Problem, Unit

__all__ = ["CandidateRow", "LayerRow", "SensitivityTable"]

TABLE_VERSION = 1


@dataclass
class CandidateRow:
    """One layer stored in one candidate format.

    `damage` is what the solver minimises; `raw_damage` is the metric's own value before the
    monotonicity rule (more bits never predicted worse along a ladder) raised or lowered it.
    `perturbation` is ‖Q(W) − W‖²; `bytes` is exact (packed weights plus scales / offsets).
    `bops` = MACs × w_bits × a_bits for one calibration sample and `latency_ms` the user's or the
    roofline figure (workers.costs); None when not measured.
    """

    candidate: str
    damage: float
    raw_damage: float
    bytes: int
    bits_per_weight: float
    perturbation: float
    bops: float | None = None
    latency_ms: float | None = None


@dataclass
class LayerRow:
    """One decision unit. `mean` is the table's `statistic` for this layer (for hutchinson the
    Hessian trace Tr(H_l)); `ci_halfwidth` its 95% half-width and `samples` the probes used, None
    for exact metrics; `converged` is False when the metric hit its cap before its target."""

    name: str
    kind: str
    weight_shape: list[int]
    weights: int
    mean: float
    ci_halfwidth: float | None
    samples: int | None
    converged: bool
    candidates: list[CandidateRow] = field(default_factory=list)
    macs: int | None = None
    shared_with: list[str] = field(default_factory=list)

    def candidate(self, name: str) -> CandidateRow:
        for row in self.candidates:
            if row.candidate == name:
                return row
        raise KeyError(f"layer {self.name!r} has no candidate {name!r}")


@dataclass
class SensitivityTable:
    """`loss` names what was differentiated ("cross_entropy", "kl_label_free", "mse_label_free").

    `groups`: unit name → layer names for units of several layers (layers not listed are their
    own unit); `ties`: lists of layer names that must take one candidate; `provenance`: seeds,
    device, batch size used, calibration caps, cost model (JSON-able, for people)."""

    metric: str
    statistic: str
    loss: str
    candidates: list[str]
    layers: list[LayerRow]
    calibration_samples: int = 0
    groups: dict[str, list[str]] = field(default_factory=dict)
    ties: list[list[str]] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)

    def layer(self, name: str) -> LayerRow:
        for row in self.layers:
            if row.name == name:
                return row
        raise KeyError(f"no layer named {name!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"version": TABLE_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SensitivityTable:
        """Parse `to_dict` output; ValueError naming the field when it is malformed."""
        if not isinstance(data, Mapping):
            raise ValueError("table: must be a JSON object")
        if data.get("version", TABLE_VERSION) != TABLE_VERSION:
            raise ValueError(f"version: unsupported table version {data.get('version')!r}")
        try:
            layers = []
            for i, raw in enumerate(data["layers"]):
                try:
                    rows = [
                        CandidateRow(
                            candidate=str(c["candidate"]),
                            damage=float(c["damage"]),
                            raw_damage=float(c.get("raw_damage", c["damage"])),
                            bytes=int(c["bytes"]),
                            bits_per_weight=float(c["bits_per_weight"]),
                            perturbation=float(c["perturbation"]),
                            bops=_optional_float(c.get("bops")),
                            latency_ms=_optional_float(c.get("latency_ms")),
                        )
                        for c in raw["candidates"]
                    ]
                    layers.append(
                        LayerRow(
                            name=str(raw["name"]),
                            kind=str(raw["kind"]),
                            weight_shape=[int(s) for s in raw["weight_shape"]],
                            weights=int(raw["weights"]),
                            mean=float(raw["mean"]),
                            ci_halfwidth=None if raw.get("ci_halfwidth") is None else float(raw["ci_halfwidth"]),
                            samples=None if raw.get("samples") is None else int(raw["samples"]),
                            converged=bool(raw.get("converged", True)),
                            candidates=rows,
                            macs=None if raw.get("macs") is None else int(raw["macs"]),
                            shared_with=[str(n) for n in raw.get("shared_with") or []],
                        )
                    )
                except (KeyError, TypeError, ValueError) as exc:
                    raise ValueError(f"layers[{i}]: malformed layer ({exc!r})") from exc
            return cls(
                metric=str(data["metric"]),
                statistic=str(data["statistic"]),
                loss=str(data["loss"]),
                candidates=[str(c) for c in data["candidates"]],
                layers=layers,
                calibration_samples=int(data.get("calibration_samples", 0)),
                groups={str(k): [str(n) for n in v] for k, v in dict(data.get("groups") or {}).items()},
                ties=[[str(n) for n in group] for group in data.get("ties") or []],
                provenance=dict(data.get("provenance") or {}),
            )
        except KeyError as exc:
            raise ValueError(f"{exc.args[0]}: required") from exc
        except TypeError as exc:
            raise ValueError(f"table: malformed ({exc})") from exc

    def to_problem(self) -> Problem:
        """One unit per group (or layer), `weights` = parameter count, one option per candidate with
        its damage and costs: "bytes" always, "bops" and "latency_ms" when every row has them. A
        group's damage and costs are its layers' sums. Ties between layers become ties between
        their units (dropped when they fall inside one unit)."""
        unit_of = {name: unit for unit, members in self.groups.items() for name in members}
        order: dict[str, list[LayerRow]] = {}
        for row in self.layers:
            order.setdefault(unit_of.get(row.name, row.name), []).append(row)
        cells = [c for row in self.layers for c in row.candidates]
        optional = [k for k in ("bops", "latency_ms") if cells and all(getattr(c, k) is not None for c in cells)]
        units = []
        for unit, rows in order.items():
            options = []
            for cand in [c.candidate for c in rows[0].candidates]:
                members = [row.candidate(cand) for row in rows]
                costs = {"bytes": float(sum(c.bytes for c in members))}
                for k in optional:
                    costs[k] = float(sum(getattr(c, k) for c in members))
                options.append(Option(candidate=cand, damage=float(sum(c.damage for c in members)), costs=costs))
            units.append(Unit(name=unit, weights=sum(r.weights for r in rows), options=tuple(options)))
        ties = []
        for group in self.ties:
            names = list(dict.fromkeys(unit_of.get(n, n) for n in group))
            if len(names) > 1 and tuple(names) not in ties:
                ties.append(tuple(names))
        return Problem(units=tuple(units), ties=tuple(ties))


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)
