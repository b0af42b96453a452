"""Optuna search: same decision space (ties, pins, allowed), budgets honoured, seeded, non-dominated."""

from __future__ import annotations

import pytest

from solver import Budget, Problem, frontier, search
from tests.utils.solver_factories import check_plan, synthetic_llm

pytest.importorskip("optuna")


def _constrained() -> Problem:
    base = synthetic_llm(12, (2, 3, 4, 8), seed=7)
    return Problem(
        base.units,
        ties=(("layer1", "layer2"),),
        pins={"layer0": "int8"},
        allowed={"layer4": frozenset({"int4", "int8"})},
    )


@pytest.mark.parametrize("sampler", ["nsga2", "tpe"])
def test_search_respects_constraints_and_returns_non_dominated(sampler):
    problem = _constrained()
    budget = Budget("bytes", 0.6 * sum(max(o.costs["bytes"] for o in u.options) for u in problem.units))
    calls = []

    def evaluate(plan):
        calls.append(plan)
        low = sum(c == "int2" for c in plan.assignment.values())
        return {"loss": plan.damage * (1 + 0.2 * low)}  # not additive: int2 layers interact

    out = search(
        problem,
        evaluate,
        objectives=[("loss", "minimize"), ("bytes", "minimize")],
        budgets=[budget],
        n_trials=30,
        seed_frontier_points=8,
        sampler=sampler,
        seed=0,
    )
    assert out and len(calls) <= 30
    for scored in out:
        check_plan(problem, scored.plan, [budget])
        assert set(scored.metrics) >= {"loss", "bytes", "damage"}
    for a in out:
        for b in out:
            if a is not b:
                assert not (
                    b.metrics["loss"] <= a.metrics["loss"] and b.metrics["bytes"] <= a.metrics["bytes"]
                )
    # Seeded with the exact frontier: its plans were evaluated first.
    seeds = frontier(problem, "bytes", 8, budgets=[budget]).points
    assert [c.assignment for c in calls[: len(seeds)]] == [s.assignment for s in seeds]


def test_search_rejects_bad_arguments():
    problem = synthetic_llm(3, (2, 4))
    with pytest.raises(ValueError, match="direction"):
        search(problem, lambda p: {}, objectives=[("loss", "lower")], n_trials=1)
    with pytest.raises(ValueError, match="valid: nsga2, tpe"):
        search(problem, lambda p: {}, sampler="grid", n_trials=1)
    with pytest.raises(ValueError, match="evaluate\\(\\) returned no"):
        search(problem, lambda p: {}, objectives=[("loss", "minimize")], n_trials=1, seed_frontier_points=0)
