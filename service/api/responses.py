"""Response shaping: ORM rows → API v1 bodies (service.api.schemas). Every route that returns a resource
shapes it here, so two routes returning the same resource return the same body, and no route imports
another route for its shaping."""

from __future__ import annotations

from service import planning
from service.api.schemas import LayerChoice, PlanOut
from service.db.models import PlanRecord
from solver import Problem


def plan_out(rec: PlanRecord, problem: Problem) -> PlanOut:
    layers = []
    for unit in problem.units:
        cand = rec.assignment[unit.name]
        opt = unit.option(cand)
        layers.append(LayerChoice(layer=unit.name, candidate=cand, damage=opt.damage, bytes=opt.costs.get("bytes", 0.0)))
    return PlanOut(
        id=rec.id, analysis_id=rec.analysis_id, budget=rec.budget, total_bytes=rec.total_bytes,
        average_bits=rec.average_bits, predicted_damage=rec.predicted_damage, costs=rec.costs,
        solver={"status": rec.solver_status, "gap": rec.gap, "tolerance": rec.tolerance, "bound": rec.bound,
                "backend": rec.backend, "solve_seconds": rec.solve_seconds},
        layers=layers, created_at=rec.created_at,
        links={"self": f"/v1/plans/{rec.id}", "analysis": f"/v1/analyses/{rec.analysis_id}"},
        **planning.plan_report(rec.id, problem, rec.budget, rec.assignment),
    )
