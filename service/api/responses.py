"""Response shaping: ORM rows → API v1 bodies (service.api.schemas). Every route that returns a resource
shapes it here, so two routes returning the same resource return the same body, and no route imports
another route for its shaping."""

from __future__ import annotations

from service.core import evaluations, planning
from service.api.schemas import (
    AnalysisOut, DatasetOut, EvaluationOut, ExportOut, LayerChoice, ModelOut, PlanOut, Progress, ShardOut, TokenOut,
    UnitChoice, WarningOut,
)
from service.storage.db.models import (
    AnalysisRecord, AnalysisShardRecord, ApiTokenRecord, DatasetRecord, EvaluationRecord, ExportRecord, ModelRecord, PlanRecord,
)
from solver import Problem


def plan_out(rec: PlanRecord, problem: Problem) -> PlanOut:
    """A plan per decision unit (`units`, with each unit's layers), and under the old name `layers`
    (one entry per unit, `layer` = the unit's name) for clients that read it."""
    units = planning.unit_choices(problem, rec.assignment)
    layers = [LayerChoice(layer=u["unit"], candidate=u["candidate"], damage=u["damage"], bytes=u["bytes"])
              for u in units]
    return PlanOut(
        id=rec.id, analysis_id=rec.analysis_id, budget=rec.budget, total_bytes=rec.total_bytes,
        average_bits=rec.average_bits, predicted_damage=rec.predicted_damage, costs=rec.costs,
        solver={"status": rec.solver_status, "gap": rec.gap, "tolerance": rec.tolerance, "bound": rec.bound,
                "backend": rec.backend, "solve_seconds": rec.solve_seconds},
        layers=layers, units=[UnitChoice(**u) for u in units], created_at=rec.created_at,
        links={"self": f"/v1/plans/{rec.id}", "analysis": f"/v1/analyses/{rec.analysis_id}"},
        **planning.plan_report(rec.id, problem, rec.budget, rec.assignment, solved=not planning.is_given(rec.solver_status)),
    )


def shard_out(rec: AnalysisShardRecord) -> ShardOut:
    return ShardOut(id=rec.id, index=rec.shard_index, status=rec.status, progress=Progress(fraction=rec.progress, message=rec.message),
                    error=rec.error, attempts=rec.attempts, started_at=rec.started_at, finished_at=rec.finished_at)


def analysis_out(rec: AnalysisRecord) -> AnalysisOut:
    base = f"/v1/analyses/{rec.id}"
    links = {"self": base}
    if rec.status == "succeeded":
        links.update(table=f"{base}/table", plans=f"{base}/plans")
    return AnalysisOut(
        id=rec.id, model_id=rec.model_id, dataset_id=rec.dataset_id, candidates=rec.candidates, metric=rec.metric,
        seed=rec.seed, options=rec.options, status=rec.status,
        progress=Progress(fraction=rec.progress, message=rec.message), error=rec.error, attempts=rec.attempts,
        created_at=rec.created_at, started_at=rec.started_at, finished_at=rec.finished_at, links=links,
    )


def evaluation_out(rec: EvaluationRecord, *, plan_costs: dict | None = None, full: bool = False) -> EvaluationOut:
    result = rec.result if rec.status == "succeeded" else None
    return EvaluationOut(
        id=rec.id, target=rec.target, analysis_id=rec.analysis_id, plan_id=rec.plan_id, dataset_id=rec.dataset_id,
        request=evaluations.public_request(rec.request),
        status=rec.status, progress=Progress(fraction=rec.progress, message=rec.message), error=rec.error,
        attempts=rec.attempts, created_at=rec.created_at, started_at=rec.started_at, finished_at=rec.finished_at,
        float_metrics=(result or {}).get("float"),
        points=evaluations.measured_points(target=rec.target, request=rec.request, result=result, plan_costs=plan_costs),
        rank_agreement=rec.rank_agreement, result=result if full else None,
        warnings=[WarningOut.model_validate(w) for w in (result or {}).get("warnings") or []],
        links={"self": f"/v1/evaluations/{rec.id}", "analysis": f"/v1/analyses/{rec.analysis_id}",
               **({"plan": f"/v1/plans/{rec.plan_id}"} if rec.plan_id else {})},
    )


def export_out(rec: ExportRecord) -> ExportOut:
    base = f"/v1/exports/{rec.id}"
    links = {"self": base, "events": f"{base}/events", "plan": f"/v1/plans/{rec.plan_id}"}
    if rec.status == "succeeded":
        links["file"] = f"{base}/file"
    return ExportOut(
        id=rec.id, plan_id=rec.plan_id, format=rec.format, status=rec.status,
        progress=Progress(fraction=rec.progress, message=rec.message), error=rec.error, attempts=rec.attempts,
        created_at=rec.created_at, started_at=rec.started_at, finished_at=rec.finished_at,
        size_bytes=rec.size_bytes, sha256=rec.sha256, filename=rec.filename, warnings=list(rec.warnings or []),
        links=links,
    )


def model_out(rec: ModelRecord) -> ModelOut:
    return ModelOut(
        id=rec.id, name=rec.name, sha256=rec.sha256, format=rec.format, architecture=rec.architecture,
        hyperparams=rec.hyperparams, size_bytes=rec.size_bytes,
        parameters=sum(int(l["parameters"]) for l in rec.layers), layers=rec.layers, inputs=rec.inputs,
        created_at=rec.created_at,
    )


def dataset_out(rec: DatasetRecord) -> DatasetOut:
    return DatasetOut(
        id=rec.id, name=rec.name, sha256=rec.sha256, size_bytes=rec.size_bytes, samples=rec.samples,
        input_shape=rec.input_shape, input_dtype=rec.input_dtype, has_targets=rec.has_targets,
        max_token_id=rec.max_token_id, created_at=rec.created_at,
    )


def token_out(rec: ApiTokenRecord) -> TokenOut:
    return TokenOut(id=rec.id, name=rec.name, prefix=rec.prefix, scopes=rec.scopes, created_at=rec.created_at,
                    revoked_at=rec.revoked_at)
