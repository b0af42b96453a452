"""The problem compiled for back-ends: ties merged into groups, options as padded numpy arrays.

Ties become one decision per group whose option damage and costs are the members' sums; pins and
allowed subsets become the set of candidates every member may take. Back-ends only see groups, so
every plan they return respects ties, pins and allowed subsets by construction.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from solver.errors import ProblemError
from solver.plan import STATUS_OPTIMAL, Plan, relative_gap
from solver.problem import Budget, Problem


@dataclass(frozen=True, eq=False)
class CompiledProblem:
    """Groups × padded options. Invalid slots hold +inf in `damage` and every cost array.

    Immutable by convention: back-ends read it, never write it, so one CompiledProblem may serve many
    solves (and threads) at once. Named apart from `Problem` (what the caller states) and from the
    network being quantized, which the rest of the project calls a model.
    """

    problem: Problem
    members: tuple[tuple[int, ...], ...]
    candidates: tuple[tuple[str, ...], ...]
    damage: np.ndarray
    costs: Mapping[str, np.ndarray]
    valid: np.ndarray

    @property
    def n_groups(self) -> int:
        return len(self.members)

    def cost(self, name: str) -> np.ndarray:
        try:
            return self.costs[name]
        except KeyError:
            known = ", ".join(self.costs) or "none"
            raise ValueError(f"unknown cost {name!r}; this problem's costs are: {known}") from None

    def totals(self, choice: np.ndarray) -> tuple[float, dict[str, float]]:
        rows = np.arange(self.n_groups)
        damage = float(self.damage[rows, choice].sum())
        costs = {name: float(arr[rows, choice].sum()) for name, arr in self.costs.items()}
        return damage, costs

    def minimum(self, cost: str) -> float:
        """Least total of `cost` any plan can reach; groups are independent once ties are merged."""
        return float(self.cost(cost).min(axis=1).sum())

    def plan(
        self,
        choice: np.ndarray,
        *,
        backend: str,
        started: float,
        status: str = STATUS_OPTIMAL,
        bound: float | None = None,
        tolerance: float | None = None,
    ) -> Plan:
        """Turn one option index per group into a Plan; `started` is a time.perf_counter() value."""
        choice = np.asarray(choice, dtype=np.intp)
        if not bool(self.valid[np.arange(self.n_groups), choice].all()):
            raise AssertionError("back-end chose an option that is not permitted")
        units = self.problem.units
        assignment: dict[str, str] = {}
        for members, cands, j in zip(self.members, self.candidates, choice.tolist()):
            for i in members:
                assignment[units[i].name] = cands[j]
        assignment = {u.name: assignment[u.name] for u in units}
        damage, costs = self.totals(choice)
        bound = damage if bound is None else min(bound, damage)
        return Plan(
            assignment=assignment,
            damage=damage,
            costs=costs,
            status=status,
            gap=relative_gap(damage, bound),
            bound=bound,
            backend=backend,
            solve_seconds=time.perf_counter() - started,
            tolerance=tolerance,
        )

    def choice_of(self, plan: Plan) -> np.ndarray:
        """Option indices of a plan made for this problem (used for warm starts and seeding)."""
        units = self.problem.units
        out = np.empty(self.n_groups, dtype=np.intp)
        for g, (members, cands) in enumerate(zip(self.members, self.candidates)):
            out[g] = cands.index(plan.assignment[units[members[0]].name])
        return out


def limits_of(compiled: CompiledProblem, budgets: "list[Budget] | tuple[Budget, ...]") -> dict[str, float]:
    """Budgets as cost → tightest limit; unknown cost names are a ValueError."""
    limits: dict[str, float] = {}
    for budget in budgets:
        compiled.cost(budget.cost)
        limits[budget.cost] = min(budget.limit, limits.get(budget.cost, float("inf")))
    return limits


def compile_problem(problem: Problem) -> CompiledProblem:
    """Merge ties (transitively) and lay options out as arrays."""
    units = problem.units
    index = {u.name: i for i, u in enumerate(units)}
    parent = list(range(len(units)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for group in problem.ties:
        ids = [index[n] for n in group]
        for other in ids[1:]:
            a, b = find(ids[0]), find(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
    by_root: dict[int, list[int]] = {}
    for i in range(len(units)):
        by_root.setdefault(find(i), []).append(i)
    members = tuple(tuple(m) for m in by_root.values())

    cost_names = problem.cost_names
    candidates: list[tuple[str, ...]] = []
    for group in members:
        common = [o.candidate for o in problem.permitted(units[group[0]])]
        for i in group[1:]:
            keep = {o.candidate for o in problem.permitted(units[i])}
            common = [c for c in common if c in keep]
        if not common:
            names = ", ".join(units[i].name for i in group)
            raise ProblemError(f"tied units ({names}) share no permitted candidate")
        candidates.append(tuple(common))

    width = max(len(c) for c in candidates)
    n_groups = len(members)
    # Filled as flat Python lists, then one array each: 10,000 units × 8 options in ~0.1 s.
    damage_l = [math.inf] * (n_groups * width)
    costs_l = {name: [math.inf] * (n_groups * width) for name in cost_names}
    valid = np.zeros((n_groups, width), dtype=bool)
    for g, (group, cands) in enumerate(zip(members, candidates)):
        valid[g, : len(cands)] = True
        base = g * width
        if len(group) == 1:
            by_name = {o.candidate: o for o in units[group[0]].options}
            for j, cand in enumerate(cands):
                o = by_name[cand]
                damage_l[base + j] = o.damage
                oc = o.costs
                for name in cost_names:
                    costs_l[name][base + j] = oc.get(name, 0.0)
            continue
        for j, cand in enumerate(cands):
            opts = [units[i].option(cand) for i in group]
            damage_l[base + j] = sum(o.damage for o in opts)
            for name in cost_names:
                costs_l[name][base + j] = sum(o.costs.get(name, 0.0) for o in opts)
    damage = np.array(damage_l, dtype=float).reshape(n_groups, width)
    costs = {name: np.array(v, dtype=float).reshape(n_groups, width) for name, v in costs_l.items()}
    for arr in (damage, *costs.values(), valid):
        arr.setflags(write=False)
    return CompiledProblem(problem, members, tuple(candidates), damage, costs, valid)
