"""/v1/solve: bring your own sensitivity table (the problem format), get a plan or a frontier back.

Synchronous and stateless: nothing is stored, no model is needed.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.core import planning
from service.api.schemas import SolveIn
from service.errors import InvalidInput
from service.core.frontiers import compute_frontier
from solver import problem_from_dict

router = APIRouter(prefix="/v1/solve", tags=["solve"])

MAX_UNITS = 100_000


@router.post("")
def solve_problem(body: SolveIn) -> dict[str, Any]:
    units = body.problem.get("units")
    if isinstance(units, list) and len(units) > MAX_UNITS:
        raise InvalidInput("problem.units", f"at most {MAX_UNITS} units per synchronous solve")
    planning.check_backend(body.backend)
    problem = problem_from_dict(body.problem)  # ProblemError → 422 naming the field
    result: dict[str, Any] = {}
    if body.budget is not None:
        budget = body.budget.model_dump(exclude_none=True)
        budgets = planning.budgets_from(problem, budget)
        plan = planning.make_plan(problem, budgets, backend=body.backend, time_limit=body.time_limit_s)
        result["plan"] = {
            "assignment": dict(plan.assignment),
            "damage": plan.damage,
            "costs": dict(plan.costs),
            "average_bits": plan.average_bits(problem) if problem.total_weights and "bytes" in plan.costs else None,
            "solver": {"status": plan.status, "gap": plan.gap, "tolerance": planning.finite(plan.tolerance),
                       "bound": planning.finite(plan.bound), "backend": plan.backend,
                       "solve_seconds": plan.solve_seconds},
        }
    if body.frontier is not None:
        if body.frontier.cost not in problem.cost_names:
            raise InvalidInput("frontier.cost", f"the problem has no cost {body.frontier.cost!r}; it has "
                                                f"{list(problem.cost_names)}")
        result["frontier"] = compute_frontier(
            problem, cost=body.frontier.cost, points=body.frontier.points, backend=body.backend
        )
    return result
