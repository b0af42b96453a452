"""Baselines to compare exact plans against: greedy by sensitivity and uniform formats."""

from __future__ import annotations

import heapq
import time

import numpy as np

from solver._compiled import CompiledProblem, compile_problem, limits_of
from solver._solve import check_reachable
from solver.backends._ilp import fits
from solver.backends._mckp import Knapsack
from solver.plan import STATUS_HEURISTIC, Plan
from solver.problem import Budget, Problem


def _bound(compiled: CompiledProblem, cost: str, limit: float) -> float:
    return Knapsack(compiled.cost(cost), compiled.damage, compiled.valid).lagrangian_bound(limit)


def greedy_plan(problem: Problem, budget: Budget) -> Plan:
    """The HAWQ-v2 / AIMET path: every unit at its dearest candidate, then repeatedly move the unit
    whose next cheaper candidate adds the least damage per unit of cost saved, until the budget
    holds. Ties, pins and allowed subsets are respected; status "heuristic" with a proven bound."""
    started = time.perf_counter()
    compiled = compile_problem(problem)
    limits = limits_of(compiled, [budget])
    check_reachable(compiled, limits)
    cost = np.where(compiled.valid, compiled.cost(budget.cost), np.inf)
    dmg = compiled.damage
    n = compiled.n_groups
    # Each group's options from dearest to cheapest (least damage first among equal costs).
    ladders = [
        sorted(np.flatnonzero(compiled.valid[g]).tolist(), key=lambda j, g=g: (-cost[g, j], dmg[g, j]))
        for g in range(n)
    ]
    pos = [0] * n
    choice = np.array([ladder[0] for ladder in ladders], dtype=np.intp)
    total = float(cost[np.arange(n), choice].sum())
    heap: list[tuple[float, int]] = []

    def push(g: int) -> None:
        ladder, i = ladders[g], pos[g]
        cur = ladder[i]
        for nxt in ladder[i + 1 :]:
            saved = cost[g, cur] - cost[g, nxt]
            if saved > 0:
                heapq.heappush(heap, ((dmg[g, nxt] - dmg[g, cur]) / saved, g))
                return

    for g in range(n):
        push(g)
    while not fits(total, budget.limit) and heap:
        _, g = heapq.heappop(heap)
        ladder, cur = ladders[g], ladders[g][pos[g]]
        while cost[g, ladder[pos[g]]] >= cost[g, cur]:
            pos[g] += 1
        total -= cost[g, cur] - cost[g, ladder[pos[g]]]
        choice[g] = ladder[pos[g]]
        push(g)
    return compiled.plan(
        choice,
        backend="greedy",
        started=started,
        status=STATUS_HEURISTIC,
        bound=_bound(compiled, budget.cost, budget.limit),
    )


def uniform_plans(problem: Problem, *, cost: str = "bytes") -> dict[str, Plan]:
    """One plan per candidate that every unit may take (pins and allowed subsets respected), with
    every unit at it. Each carries the proven least damage reachable within its own `cost` as its
    bound (when the problem has that cost), so its gap shows what uniform leaves on the table."""
    started = time.perf_counter()
    compiled = compile_problem(problem)
    has_cost = cost in compiled.costs
    common = set(compiled.candidates[0]).intersection(*map(set, compiled.candidates[1:]))
    plans: dict[str, Plan] = {}
    for cand in compiled.candidates[0]:
        if cand not in common:
            continue
        choice = np.array([cands.index(cand) for cands in compiled.candidates], dtype=np.intp)
        damage, totals = compiled.totals(choice)
        bound = _bound(compiled, cost, totals[cost]) if has_cost else float(compiled.damage.min(axis=1).sum())
        plans[cand] = compiled.plan(choice, backend="uniform", started=started, status=STATUS_HEURISTIC, bound=bound)
        started = time.perf_counter()
    return plans
