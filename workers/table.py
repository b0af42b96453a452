"""The sensitivity table: per layer × candidate, predicted damage and cost, and the statistics behind it.

Plain data with a JSON form (`to_dict` / `from_dict`) so it can be stored, served and edited, and
`to_problem` turns it into the solver's input, one decision unit per group of layers (`groups`).
`unit_layers` / `layer_formats` are the one way back from units to layers: every plan (keyed by
unit) is spelled out as layer formats there before torch, an evaluation or an export reads it.
Nothing here imports torch.

Backward compatible: the fields added with costs and units (`bops`, `latency_ms`, `macs`,
`shared_with`, `groups`, `ties`, `provenance`) and with confidence (`damage_ci`, `warnings`) are
optional in `from_dict`, so tables stored before them still parse (and give a problem with bytes
only and no ties, and plans with confidence 1.0, as before).

Warnings (`table_warnings`): a number the table cannot stand behind is flagged, never silently
used. Each is {code, layer (None for the whole analysis), message, values}:
- negative_trace / negative_statistic: the estimate is below 0 (the cross-entropy Hessian away
  from a minimum is indefinite); its damage was clamped to 0.
- ci_straddles_zero: the 95% interval holds 0 (not for label-free losses, whose every probe is ≥ 0),
  so the damage may be 0 or up to the upper end.
- not_converged: the layer had not met the metric's stopping rule when probing ended.
- stopped_early: the analysis hit max_probes or max_seconds before its target (it still succeeded).
- damage_under_predicted: a spot check (workers.spot_check) measured a candidate's single-layer loss
  change above its prediction and raised that candidate's damage by the measured factor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from solver.problem import Option, Problem, Unit, problem_to_dict

__all__ = ["CandidateRow", "LayerRow", "SensitivityTable", "layer_formats", "table_warnings", "unit_layers"]

TABLE_VERSION = 1


@dataclass
class CandidateRow:
    """One layer stored in one candidate format.

    `damage` is what the solver minimises; `raw_damage` is the metric's own value before the
    monotonicity rule (more bits never predicted worse along a ladder) raised or lowered it.
    `perturbation` is ‖Q(W) − W‖²; `bytes` is exact (packed weights plus scales / offsets).
    `bops` = MACs × w_bits × a_bits for one calibration sample and `latency_ms` the user's or the
    roofline figure (workers.costs); None when not measured. `damage_ci` is the 95% half-width of
    `damage` from the metric's sampling error (None for exact metrics); solver.confidence redraws
    from it.
    """

    candidate: str
    damage: float
    raw_damage: float
    bytes: int
    bits_per_weight: float
    perturbation: float
    bops: float | None = None
    latency_ms: float | None = None
    damage_ci: float | None = None


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
    device, batch size used, calibration caps, cost model (JSON-able, for people); `warnings`:
    see the module docstring."""

    metric: str
    statistic: str
    loss: str
    candidates: list[str]
    layers: list[LayerRow]
    calibration_samples: int = 0
    groups: dict[str, list[str]] = field(default_factory=dict)
    ties: list[list[str]] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    warnings: list[dict[str, Any]] = field(default_factory=list)

    def layer_formats(self, plan: Mapping[str, str]) -> dict[str, str]:
        """`plan` (decision unit → candidate, what the solver returns) as layer → candidate."""
        return layer_formats(plan, self.groups)

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
                            damage_ci=_optional_float(c.get("damage_ci")),
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
                warnings=[dict(w) for w in data.get("warnings") or []],
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


    def halfwidths(self) -> dict[str, dict[str, float]]:
        """Unit → candidate → 95% half-width of its damage, for solver.confidence. A group's is the
        sum of its layers' (as if their errors moved together: never narrower than the truth)."""
        unit_of = {name: unit for unit, members in self.groups.items() for name in members}
        out: dict[str, dict[str, float]] = {}
        for row in self.layers:
            for c in row.candidates:
                if c.damage_ci is not None:
                    cell = out.setdefault(unit_of.get(row.name, row.name), {})
                    cell[c.candidate] = cell.get(c.candidate, 0.0) + c.damage_ci
        return out

    def stored_problem(self) -> dict[str, Any]:
        """The problem as stored for re-solves: the solver's JSON format plus the `uncertainty`
        (half-widths) a plan's confidence needs, the analysis's `warnings` every plan shows and the
        `groups` (unit → layers) that say which layers a unit's choice applies to (problem_from_dict
        ignores all three)."""
        return {**problem_to_dict(self.to_problem()), "uncertainty": self.halfwidths(), "warnings": self.warnings,
                "groups": {unit: list(members) for unit, members in self.groups.items()}}


def unit_layers(units: Sequence[str], groups: Mapping[str, Sequence[str]] | None) -> dict[str, list[str]]:
    """Decision unit → the layers it stands for: the one place a unit becomes layers.

    Plans, problems and the API speak of units (with grouping "block" one unit is a whole block);
    torch, the evaluator and every export format speak of layers. `groups` is the table's (units of
    several layers, or renamed ones; any other unit is the layer of its own name), so a table
    without groups (grouping "layer", tables stored before units) maps each name to itself. A name
    that is a layer inside another unit is a ValueError: a plan must say the unit, or the layer's
    block-mates would silently stay float."""
    groups = groups or {}
    inside = {layer: unit for unit, members in groups.items() for layer in members if layer != unit}
    out: dict[str, list[str]] = {}
    for unit in units:
        if unit not in groups and unit in inside:
            raise ValueError(f"assignment: {unit!r} is a layer of the unit {inside[unit]!r}; a plan names decision units")
        out[unit] = list(groups.get(unit, (unit,)))
    return out


def layer_formats(plan: Mapping[str, str], groups: Mapping[str, Sequence[str]] | None) -> dict[str, str]:
    """A plan (unit → candidate) as layer → candidate: every layer of a unit takes its unit's
    candidate (`unit_layers`); units the plan omits stay out (float)."""
    return {layer: plan[unit] for unit, layers in unit_layers(list(plan), groups).items() for layer in layers}


_LABEL_FREE = ("kl_label_free", "mse_label_free")


def table_warnings(table: SensitivityTable) -> list[dict[str, Any]]:
    """The table's warnings (module docstring), layer ones in layer order, then the analysis's."""
    out: list[dict[str, Any]] = []
    what = "Hessian trace" if table.statistic == "hessian_trace" else table.statistic.replace("_", " ")
    stopping = dict(table.provenance.get("stopping") or {})
    for row in table.layers:
        values = {"mean": row.mean, "ci_halfwidth": row.ci_halfwidth, "samples": row.samples}
        spread = f" ± {row.ci_halfwidth:.3g}" if row.ci_halfwidth is not None else ""
        if row.mean < 0:
            code = "negative_trace" if table.statistic == "hessian_trace" else "negative_statistic"
            out.append(_warning(code, row.name, values,
                f"{row.name}: {what} {row.mean:.3g}{spread} is negative under the {table.loss} loss; its damage was"
                " set to 0 (no second-order harm predicted). The default label-free loss has a PSD Hessian."))
        elif row.ci_halfwidth is not None and row.mean - row.ci_halfwidth < 0 and table.loss not in _LABEL_FREE:
            out.append(_warning("ci_straddles_zero", row.name, values,
                f"{row.name}: the 95% interval of its {what} ({row.mean:.3g}{spread}) includes 0 under the"
                f" {table.loss} loss: its damage may be 0 or up to {row.mean + row.ci_halfwidth:.3g} per unit."))
        if not row.converged:
            reason = stopping.get("reason", "its cap")
            out.append(_warning("not_converged", row.name, {**values, "reason": reason},
                f"{row.name}: its estimate had not met the stopping rule when probing ended ({reason})."))
    if stopping.get("reason") in ("max_probes", "max_seconds"):
        values = {k: stopping.get(k) for k in ("reason", "probes", "confidence", "rule")}
        target = "a decided plan" if stopping.get("rule") == "decision" else "every layer's CI target"
        conf = stopping.get("confidence")
        detail = f"; plan confidence {conf:.0%}" if isinstance(conf, int | float) else ""
        out.append(_warning("stopped_early", None, values,
            f"the analysis stopped at {stopping['reason']} ({stopping.get('probes')} probes) before {target}{detail};"
            " it succeeded with what it had."))
    check = table.provenance.get("spot_check")
    for candidate, found in ((check or {}).get("candidates") or {}).items():
        if found.get("factor", 1.0) > 1.0:
            out.append(_warning("damage_under_predicted", None, {"candidate": candidate, **found},
                f"{candidate}: the measured single-layer loss change was {found['factor']:.3g}× the prediction"
                f" (median over {len(found.get('ratios') or {})} spot-checked layers); its damage was raised by that"
                " factor in every layer, an estimate from those layers."))
    missing = table.provenance.get("costs_unavailable")
    if isinstance(missing, dict) and missing.get("costs"):
        out.append(_warning("cost_unavailable", None, dict(missing),
            f"{' and '.join(missing['costs'])} not computed: {missing.get('reason')}."))
    return out


def _warning(code: str, layer: str | None, values: dict[str, Any], message: str) -> dict[str, Any]:
    return {"code": code, "layer": layer, "message": message, "values": values}


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)
