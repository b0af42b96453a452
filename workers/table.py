"""The sensitivity table: per layer × candidate, predicted damage and cost, and the statistics behind it.

Plain data with a JSON form (`to_dict` / `from_dict`) so it can be stored, served and edited, and
`to_problem` turns it into the solver's input. Nothing here imports torch.
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
    """

    candidate: str
    damage: float
    raw_damage: float
    bytes: int
    bits_per_weight: float
    perturbation: float


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

    def candidate(self, name: str) -> CandidateRow:
        for row in self.candidates:
            if row.candidate == name:
                return row
        raise KeyError(f"layer {self.name!r} has no candidate {name!r}")


@dataclass
class SensitivityTable:
    """`loss` names what was differentiated ("cross_entropy", "kl_label_free", "mse_label_free")."""

    metric: str
    statistic: str
    loss: str
    candidates: list[str]
    layers: list[LayerRow]
    calibration_samples: int = 0

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
            )
        except KeyError as exc:
            raise ValueError(f"{exc.args[0]}: required") from exc
        except TypeError as exc:
            raise ValueError(f"table: malformed ({exc})") from exc

    def to_problem(self) -> Problem:
        """Units named after layers, `weights` = parameter count, one option per candidate with
        its damage and cost {"bytes": exact bytes}."""
        return Problem(
            units=tuple(
                Unit(
                    name=row.name,
                    weights=row.weights,
                    options=tuple(
                        Option(candidate=c.candidate, damage=c.damage, costs={"bytes": float(c.bytes)})
                        for c in row.candidates
                    ),
                )
                for row in self.layers
            )
        )
