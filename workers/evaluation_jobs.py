"""Job functions for measured truth: evaluate a plan (with baselines), evaluate a frontier.

Same contract as `workers.jobs`: an `EvaluationRequest` (workers.requests, its `from_dict` the one
check) in, JSON-able results out, no torch at import time.

Plans (the request's, the baselines', the frontier's) are keyed by decision unit, like the problem
they come from; the request's `groups` (the analysis table's unit → layers; absent: every unit is
one layer) lets the evaluator spell a unit out as its layers (`workers.table.layer_formats`).

What a measured plan tells about its prediction, as `warnings` on the result (the analysis's shape:
code, layer, message, values):
- `measured_above_predicted`: the plan's measured KL to the float model is more than
  `INTERACTION_RATIO` × the sum of its layers' damages (only when those damages are KL per output
  row: the request's `predicts`). The solver minimised that sum; when layers' errors compound
  (SmolLM2-135M at 3 bits: 1.7×, while each layer alone measured at or below its prediction), plans
  that put many layers at very low bits are ranked too well. Every measured row carries
  `measured_over_predicted`.
- `worse_than_baseline`: a baseline at no more bytes measured a lower loss than the plan.

Baselines at the plan's own budget (its bytes):
- `uniform`: the dearest uniform format that fits (every layer at one candidate);
- `greedy`: the HAWQ-v2 / AIMET greedy path on the same table (`solver.greedy_plan`);
- `hawq_v3`: the plain HAWQ-v3 formula, Ω = Tr(H)/n · ‖Q(W) − W‖² with the raw Hutchinson traces
  (no monotone repair, no calibrated damage), solved exactly under the same budget. It needs a
  Hutchinson table (`hawq_table`); bitplan's own plan differs from it when its table is a
  calibrated one (measured loss_delta, Fisher) or when the monotone repair changed a damage.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from workers.requests import BASELINES, EvaluationRequest, RequestError

__all__ = [
    "baseline_plans",
    "evaluate_frontier_job",
    "hawq_v3_problem",
    "run_evaluation_job",
]

Report = Callable[[float, str], None]

INTERACTION_RATIO = 1.5  # measured KL above this × the predicted sum: the additive model missed too much


def _noop(fraction: float, message: str) -> None:
    return None


def _parsed(request: EvaluationRequest | Mapping[str, Any], target: str) -> EvaluationRequest:
    """The request, parsed by `EvaluationRequest.from_dict` when given as JSON (tests, benchmarks)."""
    if not isinstance(request, EvaluationRequest):
        if target == "plan" and isinstance(request, Mapping) and request.get("assignment") is None:
            raise RequestError("assignment: required (a plan evaluation measures one assignment)")
        request = EvaluationRequest.from_dict(request)
    if request.target != target:  # the job child picks the function by target: only a direct call gets here
        raise RequestError(f"assignment: a {request.target} evaluation, not a {target} one")
    return request


def _open(request: EvaluationRequest, report: Report):
    """Load the model and evaluation data named by the request; returns an Evaluator."""
    from workers.evaluation import Evaluator, load_evaluation
    from workers.models import load_model

    options = request.evaluation_options
    report(0.0, "loading model and evaluation data")
    model = load_model(request.model)
    data = load_evaluation(request.dataset_path, batch_size=options["batch_size"], max_samples=options["max_samples"])
    static = getattr(model, "bitplan_static_batch", None)
    if static is not None:  # a .pt2 exported with a fixed batch only takes whole batches of that size
        keep = data.inputs.shape[0] // static * static
        if keep == 0:
            raise ValueError(f"dataset: {data.inputs.shape[0]} samples, but the model was exported with a fixed"
                             f" batch of {static}")
        data.inputs = data.inputs[:keep]
        data.targets = None if data.targets is None else data.targets[:keep]
        data.batch_size = static
    report(0.05, "float reference outputs")
    return Evaluator(model, data, output_loss=options["output_loss"], groups=request.groups)


def hawq_v3_problem(table: Mapping[str, Any]):
    """The plain HAWQ-v3 problem of a Hutchinson table: damage = max(Tr, 0)/n · ‖ΔW‖² per candidate,
    straight from the traces and perturbations (the table's monotone repair undone), over the
    table's own decision units (a unit of several layers sums them, as `to_problem` does) so its
    plan is comparable with, and evaluated like, the analysis's."""
    import dataclasses

    from solver import Option, Problem, Unit
    from workers.table import SensitivityTable

    parsed = SensitivityTable.from_dict(table)
    if parsed.statistic != "hessian_trace":
        raise ValueError(f"hawq_table: must be a Hutchinson (hessian_trace) table, got statistic {parsed.statistic!r}")
    plain = []
    for row in parsed.layers:
        per_weight = max(row.mean, 0.0) / row.weights if row.weights else 0.0
        cells = [dataclasses.replace(c, damage=per_weight * c.perturbation) for c in row.candidates]
        plain.append(dataclasses.replace(row, candidates=cells))
    grouped = dataclasses.replace(parsed, layers=plain, ties=[]).to_problem()
    units = tuple(
        Unit(name=u.name, weights=u.weights,
             options=tuple(Option(o.candidate, o.damage, {"bytes": o.costs["bytes"]}) for o in u.options))
        for u in grouped.units
    )
    return Problem(units=units)


def _plan_row(plan, problem) -> dict[str, Any]:
    return {
        "assignment": dict(plan.assignment),
        "predicted_damage": plan.damage,
        "bytes": plan.costs.get("bytes"),
        "average_bits": plan.average_bits(problem),
        "status": plan.status,
    }


def baseline_plans(problem, limit: float, *, hawq_problem=None, names=BASELINES) -> dict[str, dict[str, Any]]:
    """Baseline plans within `limit` bytes on `problem` (see the module docstring). A baseline that
    cannot meet the limit is reported as {"error": ...} instead of a plan."""
    from solver import Budget, InfeasibleBudget, greedy_plan, solve, uniform_plans

    budget = Budget("bytes", float(limit))
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        if name not in BASELINES:
            raise ValueError(f"baselines: unknown {name!r} (valid: {', '.join(BASELINES)})")
        try:
            if name == "uniform":
                fitting = [p for p in uniform_plans(problem).values() if p.costs["bytes"] <= limit * (1 + 1e-12)]
                if not fitting:
                    out[name] = {"error": "no uniform format fits the budget"}
                    continue
                best = max(fitting, key=lambda p: (p.costs["bytes"], -p.damage))
                out[name] = {**_plan_row(best, problem), "candidate": next(iter(best.assignment.values()))}
            elif name == "greedy":
                out[name] = _plan_row(greedy_plan(problem, budget), problem)
            else:
                if hawq_problem is None:
                    out[name] = {"error": "no Hutchinson table to build the plain HAWQ-v3 damage from"}
                    continue
                plan = solve(hawq_problem, [budget])
                row = _plan_row(plan, hawq_problem)
                # damage of the HAWQ-v3 plan as bitplan's own table predicts it, for comparison
                row["predicted_damage_hawq_v3"] = row["predicted_damage"]
                row["predicted_damage"] = sum(
                    problem.unit(u).option(c).damage for u, c in plan.assignment.items()
                )
                out[name] = row
        except InfeasibleBudget as exc:
            out[name] = {"error": str(exc)}
    return out


def run_evaluation_job(request: EvaluationRequest | Mapping[str, Any], report: Report | None = None) -> dict[str, Any]:
    """Measure one plan (request.assignment), and the baselines at its budget (request.baselines;
    None: all of them when the request has the analysis's problem).
    Returns {"plan": measured, "float": float model's loss/accuracy, "baselines": {name: plan row +
    "measured"}, "timings"}.
    """
    report = report or _noop
    started = time.perf_counter()
    request = _parsed(request, "plan")
    assignment = dict(request.assignment)
    problem = hawq = None
    if request.problem is not None:
        from solver import problem_from_dict

        problem = problem_from_dict(request.problem)
    if request.hawq_table is not None:
        hawq = hawq_v3_problem(request.hawq_table)
    names = request.baselines
    if names is None:
        names = list(BASELINES) if problem is not None else []

    evaluator = _open(request, report)
    report(0.1, "measuring the plan")
    result: dict[str, Any] = {"plan": evaluator.evaluate(assignment), "float": evaluator.float_metrics}
    if problem is not None:
        plan_bytes = sum(problem.unit(u).option(c).costs.get("bytes", 0.0) for u, c in assignment.items())
        result["plan"]["bytes"] = plan_bytes
        result["plan"]["predicted_damage"] = sum(problem.unit(u).option(c).damage for u, c in assignment.items())
        result["plan"]["average_bits"] = plan_bytes * 8.0 / problem.total_weights if problem.total_weights else None
        baselines = baseline_plans(problem, plan_bytes, hawq_problem=hawq, names=names)
        for i, (name, row) in enumerate(baselines.items()):
            report(0.1 + 0.9 * i / max(len(baselines), 1), f"measuring baseline {name}")
            if "assignment" in row:
                row["measured"] = evaluator.evaluate(row["assignment"])
        result["baselines"] = baselines
    if request.refine is not None:
        result["refined"] = _refined(request, problem, evaluator, result["plan"]["bytes"], report)
    result["warnings"] = _plan_warnings(result, request.predicts)
    result["timings"] = {"total_s": time.perf_counter() - started}
    report(1.0, "done")
    return result


def evaluate_frontier_job(request: EvaluationRequest | Mapping[str, Any], report: Report | None = None) -> dict[str, Any]:
    """Measure K points of an analysis's frontier in one job: one model load, K plans (the
    request's `plans` in that order, or `points` of the problem's frontier within
    `min_bits`..`max_bits`), then `refine_trials` Optuna trials around them with the measured loss
    as objective (0 = none; needs optuna).
    Returns {"points": [{bytes, average_bits, predicted_damage, assignment, measured}], "float",
    "rank_agreement": predicted damage vs measured loss across points, "refined": [...]}.
    """
    report = report or _noop
    started = time.perf_counter()
    request = _parsed(request, "frontier")
    from solver import frontier, problem_from_dict

    problem = problem_from_dict(request.problem)
    points, trials = request.points, request.refine_trials
    lo_bits, hi_bits = request.min_bits, request.max_bits
    if request.plans is not None:
        plans = [_given_plan(problem, dict(a), f"plans[{i}]") for i, a in enumerate(request.plans)]
    else:
        front = frontier(problem, "bytes", points=max(points * 4, points))
        plans = list(front.points)
        total = problem.total_weights
        if lo_bits is not None:
            plans = [p for p in plans if p.costs["bytes"] * 8 / total >= lo_bits - 1e-9]
        if hi_bits is not None:
            plans = [p for p in plans if p.costs["bytes"] * 8 / total <= hi_bits + 1e-9]
        plans = _spread(plans, points)
        if not plans:
            raise ValueError("min_bits/max_bits: no frontier point lies in that range")

    evaluator = _open(request, report)
    rows = []
    for i, plan in enumerate(plans):
        report(0.1 + 0.8 * i / len(plans), f"measuring frontier point {i + 1}/{len(plans)}")
        row = _plan_row(plan, problem)
        row["measured"] = evaluator.evaluate(plan.assignment)
        rows.append(row)

    from workers.proxy_quality import rank_agreement

    agreement = rank_agreement([r["predicted_damage"] for r in rows], [r["measured"]["loss"] for r in rows])
    result: dict[str, Any] = {"points": rows, "float": evaluator.float_metrics, "rank_agreement": agreement}
    if trials:
        report(0.9, f"refining the frontier with {trials} measured trials")
        result["refined"] = refine_frontier(problem, evaluator, plans, rows, trials=trials)
    warnings = []
    for i, row in enumerate(rows):
        warnings += _interaction_warnings(row, row["measured"], request.predicts, f"frontier point {i + 1}")
    for row in result.get("refined", []):
        _interaction_warnings(row, row["measured"], request.predicts, "refined plan")  # the ratio only
    result["warnings"] = warnings
    result["timings"] = {"total_s": time.perf_counter() - started}
    report(1.0, "done")
    return result


def _interaction_warnings(row: dict[str, Any], measured: Mapping[str, Any], predicts: str | None,
                          what: str) -> list[dict[str, Any]]:
    """Set row["measured_over_predicted"] (None when the damages are not KL); a warning above
    INTERACTION_RATIO (module docstring)."""
    kl, predicted = measured.get("kl"), row.get("predicted_damage")
    ratio = None
    if (predicts == "kl" and isinstance(kl, int | float) and isinstance(predicted, int | float)
            and math.isfinite(kl) and predicted > 0):
        ratio = kl / predicted
    row["measured_over_predicted"] = ratio
    if ratio is None or ratio <= INTERACTION_RATIO:
        return []
    return [{
        "code": "measured_above_predicted", "layer": None,
        "values": {"plan": what, "measured_kl": kl, "predicted_damage": predicted, "ratio": ratio},
        "message": f"{what}: its measured KL to the float model ({kl:.3g} per output row) is {ratio:.1f}× the sum of"
                   f" its layers' predicted damages ({predicted:.3g}): their errors compound beyond what the solver"
                   " added up, so plans with many layers at the lowest bits are ranked too well here; compare it with"
                   " the baselines, or evaluate a plan at these bytes with refine_rounds (the interactions loop)",
    }]


def _plan_warnings(result: dict[str, Any], predicts: str | None) -> list[dict[str, Any]]:
    """The plan's interaction warning, and the baselines (and the refined plan) that measured better
    at no more bytes."""
    plan = result["plan"]
    out = _interaction_warnings(plan, plan, predicts, "the plan")
    rivals = [(f"the {name} baseline", f"result.baselines.{name}", name, row)
              for name, row in (result.get("baselines") or {}).items()]
    if result.get("refined") is not None:
        rivals.append(("the refined plan", "result.refined", "refined", result["refined"]))
    for what, where, name, row in rivals:
        if "measured" not in row:
            continue
        _interaction_warnings(row, row["measured"], predicts, what)  # the ratio only
        loss, theirs = plan.get("loss"), row["measured"].get("loss")
        if (isinstance(loss, int | float) and isinstance(theirs, int | float) and theirs < loss
                and row.get("bytes") is not None and plan.get("bytes") is not None
                and row["bytes"] <= plan["bytes"] * (1 + 1e-12)):
            kind = plan.get("loss_kind") or "loss"
            out.append({
                "code": "worse_than_baseline", "layer": None,
                "values": {"baseline": name, "loss": loss, "baseline_loss": theirs, "loss_kind": kind,
                           "bytes": plan["bytes"], "baseline_bytes": row["bytes"]},
                "message": f"the plan measured {kind} {loss:.4g}, worse than {what}'s {theirs:.4g} at"
                           f" {row['bytes'] / plan['bytes']:.1%} of its bytes: keep that one as a plan by posting its"
                           f" assignment ({where}.assignment) to the analysis's plans",
            })
    return out


def _refined(request: EvaluationRequest, problem, evaluator, plan_bytes: float, report: Report) -> dict[str, Any]:
    """The interactions loop (workers.refine) at the plan's bytes, measuring on the analysis's
    calibration data, then the refined plan measured on the evaluation data like the others. The
    loop starts from the exact solve at those bytes, not from the plan asked about (a given plan
    is not the table's optimum); it never returns one it measured worse than that start."""
    from solver import Budget
    from workers.jobs import load_analysis_calibration
    from workers.refine import refine_plan
    from workers.table import SensitivityTable

    refine = request.refine
    report(0.9, "refining: loading the analysis's calibration data")
    calibration = load_analysis_calibration(refine["analysis"], evaluator.model)
    table = SensitivityTable.from_dict(refine["table"])
    output_loss = dict(refine["analysis"].metric_options).get("output_loss", "kl")
    refinement = refine_plan(evaluator.model, calibration, table, [Budget("bytes", plan_bytes)], rounds=refine["rounds"],
                             output_loss=output_loss, report=lambda fraction, message: report(0.9, message))
    row = refinement.to_dict()
    row["calibration_measured"] = row.pop("measured")  # the loop's own label-free loss, not the evaluation's
    row["bytes"] = row["costs"].get("bytes")
    row["predicted_damage"] = row.pop("predicted")
    row["average_bits"] = row["bytes"] * 8.0 / problem.total_weights if row["bytes"] and problem.total_weights else None
    report(0.95, "measuring the refined plan")
    row["measured"] = evaluator.evaluate(row["assignment"])
    return row


def _given_plan(problem, assignment: dict[str, str], field: str):
    """solver.given_plan, its errors naming `field` (a request's `plans[i]`)."""
    from solver import AssignmentError, given_plan

    try:
        return given_plan(problem, assignment)
    except AssignmentError as exc:
        raise ValueError(f"{field}.{exc.unit}: {exc.reason}" if exc.unit else f"{field}: {exc.reason}") from None


def _spread(plans: list, k: int) -> list:
    """k plans evenly spaced (by index) over a sorted frontier, ends included."""
    if len(plans) <= k:
        return plans
    if k == 1:
        return [plans[-1]]
    idx = sorted({round(i * (len(plans) - 1) / (k - 1)) for i in range(k)})
    return [plans[i] for i in idx]


def refine_frontier(problem, evaluator, plans: list, rows: list[dict[str, Any]], *, trials: int, seed: int = 0) -> list[dict]:
    """Optuna search (`solver.search`, NSGA-II on measured loss × bytes) seeded with the exact frontier
    plans, within the dearest point's bytes; keeps the searched plans that no measured exact point
    dominates (none has both fewer-or-equal bytes and lower-or-equal measured loss)."""
    from solver import Budget, search

    limit = max(r["bytes"] for r in rows)
    scored = search(
        problem,
        lambda plan: {"loss": float(evaluator.evaluate(plan.assignment)["loss"])},
        objectives=(("loss", "minimize"), ("bytes", "minimize")),
        budgets=[Budget("bytes", limit)],
        n_trials=trials,
        seed_plans=plans,
        seed_frontier_points=0,
        seed=seed,
    )
    exact = [(r["bytes"], r["measured"]["loss"]) for r in rows]
    kept = []
    for item in scored:
        b, loss = item.plan.costs["bytes"], item.metrics["loss"]
        if math.isnan(loss) or any(eb <= b and el <= loss for eb, el in exact):
            continue
        kept.append(
            {
                "assignment": dict(item.plan.assignment),
                "bytes": b,
                "average_bits": b * 8 / problem.total_weights,
                "predicted_damage": item.plan.damage,
                "measured": evaluator.evaluate(item.plan.assignment),
            }
        )
    return sorted(kept, key=lambda r: r["bytes"])
