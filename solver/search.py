"""Optuna search over the same decision space, for objectives that are measured or not additive.

The exact frontier seeds the study (enqueue_trial), so the search starts from provably optimal
trade-offs of the additive model and spends its trials on what the model cannot see.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from solver._compiled import compile_problem, limits_of
from solver._frontier import frontier
from solver.backends._ilp import fits
from solver.plan import STATUS_HEURISTIC, Plan
from solver.problem import Budget, Problem

DIRECTIONS = ("minimize", "maximize")


@dataclass(frozen=True)
class ScoredPlan:
    """A plan with the metrics `evaluate` returned for it (plus its damage and costs)."""

    plan: Plan
    metrics: dict[str, float]


def search(
    problem: Problem,
    evaluate: Callable[[Plan], Mapping[str, float]],
    *,
    objectives: Sequence[tuple[str, str]] = (("damage", "minimize"), ("bytes", "minimize")),
    budgets: Sequence[Budget] = (),
    n_trials: int = 100,
    seed_plans: Sequence[Plan] = (),
    seed_frontier_points: int = 20,
    sampler: str = "nsga2",
    seed: int | None = None,
) -> list[ScoredPlan]:
    """Multi-objective search; returns the non-dominated evaluated plans that meet the budgets.

    An objective name is looked up in `evaluate`'s metrics first, then in the plan's costs, then
    "damage". One categorical parameter per tie group (named after its first unit) over the
    candidates its pins and allowed subsets leave, so ties, pins and allowed subsets always hold.
    Plans breaking a budget are pruned without calling `evaluate`. `seed_plans` and an exact
    frontier of `seed_frontier_points` points on the first objective that is a cost (0: none) are
    enqueued first. `sampler`: "nsga2" or "tpe".
    """
    try:
        import optuna
    except ImportError as exc:  # held back until first use
        raise ImportError("solver.search needs optuna: pip install 'bitplan[search]'") from exc
    for name, direction in objectives:
        if direction not in DIRECTIONS:
            raise ValueError(f"objective {name!r}: direction must be one of {DIRECTIONS}, got {direction!r}")
    if not objectives:
        raise ValueError("search needs at least one objective")
    if sampler == "nsga2":
        smp = optuna.samplers.NSGAIISampler(seed=seed)
    elif sampler == "tpe":
        smp = optuna.samplers.TPESampler(seed=seed, multivariate=True)
    else:
        raise ValueError(f"unknown sampler {sampler!r}; valid: nsga2, tpe")

    compiled = compile_problem(problem)
    limits = limits_of(compiled, budgets)
    units = problem.units
    keys = [units[m[0]].name for m in compiled.members]
    choices = [list(c) for c in compiled.candidates]

    seeds = list(seed_plans)
    cost_objs = [n for n, _ in objectives if n in compiled.costs]
    if seed_frontier_points > 0 and cost_objs:
        seeds += frontier(problem, cost_objs[0], seed_frontier_points, budgets=budgets).points

    study = optuna.create_study(directions=[d for _, d in objectives], sampler=smp)
    for plan in seeds:
        study.enqueue_trial({k: plan.assignment[k] for k in keys}, skip_if_exists=True)

    results: dict[int, ScoredPlan] = {}

    def objective(trial: optuna.Trial) -> tuple[float, ...]:
        started = time.perf_counter()
        choice = np.array(
            [c.index(trial.suggest_categorical(k, c)) for k, c in zip(keys, choices)], dtype=np.intp
        )
        plan = compiled.plan(choice, backend=f"optuna-{sampler}", started=started, status=STATUS_HEURISTIC)
        if not all(fits(plan.costs[n], lim) for n, lim in limits.items()):
            raise optuna.TrialPruned("breaks a budget")
        measured = dict(evaluate(plan))
        metrics = {"damage": plan.damage, **plan.costs, **measured}
        missing = [n for n, _ in objectives if n not in metrics]
        if missing:
            raise ValueError(f"evaluate() returned no {missing}; it gave {sorted(measured)}")
        results[trial.number] = ScoredPlan(plan, {k: float(v) for k, v in metrics.items()})
        return tuple(float(metrics[n]) for n, _ in objectives)

    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study.optimize(objective, n_trials=max(n_trials, len(seeds)))
    finally:
        optuna.logging.set_verbosity(previous)
    return _pareto(list(results.values()), objectives)


def _pareto(scored: list[ScoredPlan], objectives: Sequence[tuple[str, str]]) -> list[ScoredPlan]:
    sign = [1.0 if d == "minimize" else -1.0 for _, d in objectives]

    def vec(s: ScoredPlan) -> tuple[float, ...]:
        return tuple(g * s.metrics[n] for g, (n, _) in zip(sign, objectives))

    out: list[ScoredPlan] = []
    seen: set[tuple[str, ...]] = set()
    for s in sorted(scored, key=vec):
        v = vec(s)
        key = tuple(s.plan.assignment.values())
        if key in seen:
            continue
        if any(all(a <= b for a, b in zip(vec(o), v)) for o in out):
            continue
        seen.add(key)
        out.append(s)
    return out
