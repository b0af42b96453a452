"""Interactions: correct a plan's per-unit damages with its measured output error, re-solve, keep the best.

The table's damages add up only approximately: the loss of a plan also has cross terms between
units (two rounding errors that push the output the same way, or cancel), and beyond second order
(a perturbation as large as int2's can flip activations). Around a plan P, with Δ_l the rounding
error of layer l under P, the quadratic model of the loss is

    L(Δ) = Σ_l d(l, c_l) + Σ_{l<m} Δ_lᵀ G_lm Δ_m,

so what layer l really adds given the others is d(l, c) + Δ_l^cᵀ r_l with r_l = Σ_{m≠l} G_lm Δ_m: the
table's damage plus a term linear in the layer's own error. One forward + backward of the label-free
loss at the fake-quantized model gives the measured loss L(P) and its gradient g = ∇L(P), which
in the quadratic model is GΔ, so r_l = g_l − G_ll Δ_l. The block G_ll is known only along Δ_l (the
table says Δ_lᵀ G_ll Δ_l = 2 d(l, c_l)), so G_ll Δ_l is taken along that direction:
r_l ≈ g_l − 2 d(l, c_l) Δ_l / ‖Δ_l‖². This is exact for the chosen candidate and for float, and the
gradient is the real one, so what the quadratic model misses at P (int2's higher-order rise) enters
through it too.

Each round: measure the current best plan (one forward + backward over the calibration data),
replace every unit's damages by d(l, c) + Δ_l^cᵀ r_l, re-solve under the same budgets, measure the
new plan; keep whichever measured lowest. It stops after `rounds` rounds or when a plan comes back
that was already measured. The plan returned is never measured worse than the exact solve it
started from (the start is a candidate for "best"). Each round reports the table's prediction, the
measured loss and the units whose measured share ½ g_lᵀΔ_l (own damage plus half of its cross
terms; the shares add up to the loss for a quadratic) exceeds their predicted damage.

The measured loss is the label-free one the metrics use (KL to the float model's outputs, or
½‖f − f₀‖²), on the calibration data whatever targets it has; keep evaluation data separate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from solver import Budget, Option, Plan, Problem, Unit, solve, uniform_plans
from workers.data import Calibration
from workers.errors import AnalysisError
from workers.metrics._common import grad_only_for
from workers.metrics._loss import OUTPUT_LOSSES, forward, model_device
from workers.models import LayerInfo, find_layers
from workers.quantizers import Quantizer, parse_candidate
from workers.table import SensitivityTable

__all__ = ["RefineRound", "Refinement", "refine_plan"]

Report = Callable[[float, str], None]

# model outputs (float32) forwarded with a graph at once when measuring a plan
OUTPUT_CHUNK_BYTES = 2**27


@dataclass(frozen=True)
class RefineRound:
    """One measured plan: `predicted` is the table's sum of damages, `measured` the label-free
    calibration loss of the fake-quantized model; `exceeded` the units whose measured share was
    larger than their predicted damage, as (unit, share, predicted)."""

    round: int
    assignment: dict[str, str]
    predicted: float
    measured: float
    bytes: float | None
    exceeded: tuple[tuple[str, float, float], ...] = ()
    source: str = "solve"  # "solve": the (corrected) exact plan; "uniform": the baseline it must beat

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "source": self.source,
            "assignment": dict(self.assignment),
            "predicted": self.predicted,
            "measured": self.measured,
            "bytes": self.bytes,
            "exceeded": [{"unit": u, "measured_share": s, "predicted": p} for u, s, p in self.exceeded],
        }


@dataclass(frozen=True)
class Refinement:
    """The best measured plan (`plan`, its damage and costs from the original table) and every
    round, the exact solve first (round 0)."""

    plan: Plan
    measured: float
    best_round: int
    rounds: tuple[RefineRound, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "assignment": dict(self.plan.assignment),
            "predicted": self.plan.damage,
            "measured": self.measured,
            "best_round": self.best_round,
            "costs": dict(self.plan.costs),
            "rounds": [r.to_dict() for r in self.rounds],
        }


def refine_plan(
    model: nn.Module,
    calibration: Calibration,
    table: SensitivityTable,
    budgets: Sequence[Budget],
    *,
    rounds: int = 3,
    output_loss: str = "kl",
    backend: str = "auto",
    report: Report | None = None,
) -> Refinement:
    """The exact plan of `table` under `budgets`, corrected for interactions (module docstring).

    Leaves the model's weights unchanged. `rounds` ≥ 0 (0: only measure the exact solve)."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"options.refine_rounds: must be an integer ≥ 0, got {rounds!r}")
    if output_loss not in OUTPUT_LOSSES:
        raise ValueError(f"options.output_loss: must be one of {', '.join(OUTPUT_LOSSES)}, got {output_loss!r}")
    report = report or (lambda fraction, message: None)
    budgets = list(budgets)
    problem = table.to_problem()
    unit_of = {name: unit for unit, members in table.groups.items() for name in members}
    layers = [(info, w) for info, w in find_layers(model)]
    named = {info.name: (info, w) for info, w in layers}
    missing = [row.name for row in table.layers if row.name not in named]
    if missing:
        raise ValueError(f"table: layer {missing[0]!r} is not a quantizable layer of this model")
    measurer = _Measurer(model, calibration, [named[row.name] for row in table.layers], output_loss)
    quantizers = {name: parse_candidate(name) for name in table.candidates}

    plan = solve(problem, budgets, backend=backend)
    measured_at: dict[tuple[tuple[str, str], ...], float] = {}
    penalty: dict[str, dict[str, float]] = {}
    history: list[RefineRound] = []
    best: _Best | None = None
    current = plan
    for k in range(rounds + 1):
        report(k / (rounds + 1), f"refine: measuring round {k} of {rounds}")
        formats = table.layer_formats(current.assignment)
        layer_choice = {row.name: formats[row.name] for row in table.layers}
        measured, grads = measurer(layer_choice, quantizers)
        shares, corrections = _corrections(table, layer_choice, grads, named, quantizers)
        measured_at[_key(current)] = measured
        history.append(
            RefineRound(
                round=k,
                assignment=dict(current.assignment),
                predicted=_damage(problem, current.assignment),
                measured=measured,
                bytes=current.costs.get("bytes"),
                exceeded=_exceeded(problem, current.assignment, _by_unit(shares, unit_of)),
            )
        )
        if best is not None:
            _learn(penalty, best, current.assignment, measured, problem)
        if best is None or measured < best.measured:
            best = _Best(measured, current, k, _by_unit(corrections, unit_of))
        if k == rounds:
            break
        nxt = _propose(problem, best, penalty, measured_at, budgets, backend)
        if nxt is None:
            break  # the corrected model prefers the best plan itself: nothing new to measure
        current = nxt
    # the dearest uniform plan within the budgets is measured too: an interaction the corrections
    # could not see never leaves the user with a plan measured worse than the simplest one
    uniform = _dearest_uniform(problem, budgets) if rounds > 0 else None
    if uniform is not None and _key(uniform) not in measured_at:
        formats = table.layer_formats(uniform.assignment)
        measured, _ = measurer({row.name: formats[row.name] for row in table.layers}, quantizers)
        history.append(RefineRound(round=len(history), assignment=dict(uniform.assignment),
                                   predicted=_damage(problem, uniform.assignment), measured=measured,
                                   bytes=uniform.costs.get("bytes"), source="uniform"))
        if measured < best.measured:
            best = _Best(measured, uniform, len(history) - 1, {})
    report(1.0, f"refine: best measured plan from round {best.round}")
    measured, plan_best, k_best = best.measured, best.plan, best.round
    original = Plan(
        assignment=dict(plan_best.assignment),
        damage=_damage(problem, plan_best.assignment),
        costs=dict(plan_best.costs),
        status=plan.status if k_best == 0 else "refined",
        gap=plan.gap if k_best == 0 else math.nan,
        bound=plan.bound,
        backend=plan.backend,
        solve_seconds=plan.solve_seconds,
    )
    return Refinement(plan=original, measured=measured, best_round=k_best, rounds=tuple(history))


def _dearest_uniform(problem, budgets: Sequence[Budget]) -> Plan | None:
    """The uniform plan with the most bytes that meets every budget (None when none does)."""
    fits = [p for p in uniform_plans(problem).values()
            if all(p.costs.get(b.cost, math.inf) <= b.limit * (1 + 1e-12) for b in budgets)]
    return max(fits, key=lambda p: p.costs.get("bytes", 0.0), default=None)


@dataclass
class _Best:
    measured: float
    plan: Plan
    round: int
    corrections: dict[str, dict[str, float]]  # unit → candidate → Δ^cᵀ r at this plan


def _key(plan: Plan) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(plan.assignment.items()))


def _by_unit(per_layer: Mapping[str, Any], unit_of: Mapping[str, str]) -> dict[str, Any]:
    """Sum per-layer numbers (or per-candidate dicts of numbers) into their units."""
    out: dict[str, Any] = {}
    for layer, value in per_layer.items():
        unit = unit_of.get(layer, layer)
        if isinstance(value, Mapping):
            acc = out.setdefault(unit, {})
            for cand, v in value.items():
                acc[cand] = acc.get(cand, 0.0) + v
        else:
            out[unit] = out.get(unit, 0.0) + value
    return out


def _exceeded(problem: Problem, assignment: Mapping[str, str], shares: Mapping[str, float]):
    rows = []
    for unit, cand in assignment.items():
        predicted = problem.unit(unit).option(cand).damage
        if shares.get(unit, 0.0) > predicted:
            rows.append((unit, shares[unit], predicted))
    return tuple(rows)


def _model_damage(
    problem: Problem, best: _Best, penalty: Mapping[str, Mapping[str, float]], unit: str, cand: str
) -> float:
    """The corrected damage of one option: the table's, its interaction with the best plan's other
    units, and what measured plans taught about it."""
    return (
        problem.unit(unit).option(cand).damage
        + best.corrections.get(unit, {}).get(cand, 0.0)
        + penalty.get(unit, {}).get(cand, 0.0)
    )


def _predicted(problem: Problem, best: _Best, penalty, assignment: Mapping[str, str]) -> float:
    """The corrected model's loss for `assignment`: the best plan's measured loss plus the change
    of corrected damage over the units that differ."""
    change = 0.0
    for unit, cand in assignment.items():
        was = best.plan.assignment[unit]
        if cand != was:
            change += _model_damage(problem, best, penalty, unit, cand)
            change -= _model_damage(problem, best, penalty, unit, was)
    return best.measured + change


def _learn(
    penalty: dict[str, dict[str, float]],
    best: _Best,
    assignment: Mapping[str, str],
    measured: float,
    problem: Problem,
) -> None:
    """A measured plan that came out worse than the corrected model predicted: add the miss to the
    options it changed from the best plan, in proportion to how much each was predicted to change,
    so that the model now predicts it exactly (the best plan's prediction is untouched)."""
    miss = measured - _predicted(problem, best, penalty, assignment)
    changed = [u for u, c in assignment.items() if c != best.plan.assignment[u]]
    if miss <= 0 or not changed:
        return
    sizes = [
        abs(
            _model_damage(problem, best, penalty, u, assignment[u])
            - _model_damage(problem, best, penalty, u, best.plan.assignment[u])
        )
        for u in changed
    ]
    total = math.fsum(sizes)
    miss *= 1.0 + 1e-9  # strictly: the same plan must not come back as a tie
    for u, size in zip(changed, sizes, strict=True):
        share = size / total if total > 0 else 1.0 / len(changed)
        penalty.setdefault(u, {})
        penalty[u][assignment[u]] = penalty[u].get(assignment[u], 0.0) + miss * share


_MAX_RESOLVES = 50


def _propose(problem, best: _Best, penalty, measured_at, budgets, backend) -> Plan | None:
    """The corrected model's plan, if it is one not measured yet; a proposal already measured
    teaches the model its miss and the solve is repeated (no forward pass needed for that)."""
    for _ in range(_MAX_RESOLVES):
        corrected = Problem(
            units=tuple(
                Unit(
                    name=u.name,
                    weights=u.weights,
                    options=tuple(
                        Option(o.candidate, _model_damage(problem, best, penalty, u.name, o.candidate), o.costs)
                        for o in u.options
                    ),
                )
                for u in problem.units
            ),
            ties=problem.ties,
            pins=problem.pins,
            allowed=problem.allowed,
        )
        plan = solve(corrected, budgets, backend=backend)
        key = _key(plan)
        if key == _key(best.plan):
            return None
        if key not in measured_at:
            return plan
        before = {u: dict(c) for u, c in penalty.items()}
        _learn(penalty, best, plan.assignment, measured_at[key], problem)
        if penalty == before:
            return None
    return None


def _damage(problem: Problem, assignment: Mapping[str, str]) -> float:
    return math.fsum(problem.unit(u).option(c).damage for u, c in assignment.items())


def _corrections(
    table: SensitivityTable,
    choice: Mapping[str, str],
    grads: Mapping[str, torch.Tensor],
    named: Mapping[str, tuple[LayerInfo, nn.Parameter]],
    quantizers: Mapping[str, Quantizer],
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Per layer: its measured share ½ g·Δ at the plan, and Δ^cᵀ r for every candidate c."""
    shares: dict[str, float] = {}
    corrections: dict[str, dict[str, float]] = {}
    for row in table.layers:
        info, weight = named[row.name]
        w = weight.detach().to(torch.float32)
        g = grads[row.name].to(torch.float64)
        chosen = (info.quantize(quantizers[choice[row.name]], w) - w).to(torch.float64)
        norm = float(chosen.pow(2).sum())
        own = row.candidate(choice[row.name]).raw_damage
        along = 2.0 * own / norm if norm > 0 else 0.0
        shares[row.name] = 0.5 * float((g * chosen).sum())
        per_candidate = {}
        for c in row.candidates:
            delta = chosen if c.candidate == choice[row.name] else (
                info.quantize(quantizers[c.candidate], w) - w
            ).to(torch.float64)
            per_candidate[c.candidate] = float((g * delta).sum()) - along * float((chosen * delta).sum())
        corrections[row.name] = per_candidate
    return shares, corrections


class _Measurer:
    """Label-free calibration loss of the model with some layers fake-quantized, and its gradient
    in those layers' weights (one forward + backward per calibration batch); weights restored."""

    def __init__(
        self,
        model: nn.Module,
        calibration: Calibration,
        layers: Sequence[tuple[LayerInfo, nn.Parameter]],
        output_loss: str,
    ):
        self.model = model
        self.calibration = calibration
        self.layers = list(layers)
        self.output_loss = output_loss
        device = model_device(model)
        self.chunk = None  # samples forwarded with a graph at once: whole batches until the output size is known
        with torch.no_grad(), grad_only_for(model, []):
            if getattr(model, "bitplan_static_batch", None) is None:  # a fixed-batch .pt2 takes whole batches only
                first = next(iter(calibration.batches()))[0][:1]
                per_sample = forward(model, first.to(device)).numel() * 4
                self.chunk = max(1, OUTPUT_CHUNK_BYTES // per_sample)
            self.references = [forward(model, x.to(device)).detach().to(torch.float32) for x in self._chunks()]
        self.rows = sum(r[..., 0].numel() for r in self.references)

    def _chunks(self):
        """The calibration inputs in the batches the loss is measured on: a batch of SmolLM2 windows at
        once held 64 × 128 × 49,152 float32 logits, several times over in the graph (23 GB)."""
        for x, _ in self.calibration.batches():
            step = self.chunk or x.shape[0]
            for lo in range(0, x.shape[0], step):
                yield x[lo : lo + step]

    def __call__(
        self, choice: Mapping[str, str], quantizers: Mapping[str, Quantizer]
    ) -> tuple[float, dict[str, torch.Tensor]]:
        params = [w for _, w in self.layers]
        originals = [w.detach().clone() for w in params]
        grads = [torch.zeros_like(w, dtype=torch.float64) for w in params]
        total = 0.0
        device = model_device(self.model)
        try:
            with torch.no_grad():
                for (info, w), original in zip(self.layers, originals, strict=True):
                    w.copy_(info.quantize(quantizers[choice[info.name]], original).to(w.dtype))
            with grad_only_for(self.model, params):
                for x, ref in zip(self._chunks(), self.references, strict=True):
                    out = forward(self.model, x.to(device)).to(torch.float32)
                    loss = self._loss(out, ref) / self.rows
                    if not torch.isfinite(loss):
                        raise AnalysisError("refine: the loss of the quantized model is not finite")
                    total += float(loss.detach())
                    for acc, g in zip(grads, torch.autograd.grad(loss, params, allow_unused=True), strict=True):
                        if g is not None:
                            acc.add_(g.to(torch.float64))
        finally:
            with torch.no_grad():
                for w, original in zip(params, originals, strict=True):
                    w.copy_(original)
        return total, {info.name: g for (info, _), g in zip(self.layers, grads, strict=True)}

    def _loss(self, out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        z = out.reshape(-1, out.shape[-1])
        z0 = ref.reshape(-1, ref.shape[-1])
        if self.output_loss == "mse":
            return 0.5 * (z - z0).pow(2).sum()
        log_q, log_p = torch.log_softmax(z, dim=-1), torch.log_softmax(z0, dim=-1)
        return F.kl_div(log_q, log_p, reduction="sum", log_target=True)
