"""The job kinds: one `JobKind` entry each, the only place a kind is named.

A kind is its record (a table with the shared lifecycle columns, `store.job_record`), its request
(workers.requests), how the request is built from the rows (`build`, in the parent: the child
never sees the database), and its work (`run`, in the sandboxed child: the one place torch
code runs). Queues, runner, reaper and child iterate over `KINDS` and never branch on a name, so
adding a kind is its record (+ migration and its line in `store.JOB_RECORDS`), its request and job
function in workers, and one entry here.

`build` and `collect` / `discard` run in the parent (the job runner); `run` runs in the child and
imports workers' torch code only when called, so importing this module is cheap everywhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from service.storage import shards, store
from workers.requests import AnalysisRequest, EvaluationRequest, ExportRequest, ModelSource, damage_predicts

__all__ = ["KINDS", "JobKind", "Payload", "get_kind", "model_source"]

Report = Callable[[float, str], None]


@dataclass(frozen=True)
class Payload:
    """What the parent hands one attempt's child (as JSON on its stdin): the kind's request, the
    extras its `run` reads besides (`context`: an evaluation's frontier indices), and the one folder
    the child may write (`scratch`, for kinds that write a file; the runner removes it afterwards)."""

    request: Any  # the kind's request class (JobKind.request)
    context: Mapping[str, Any] = field(default_factory=dict)
    scratch: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"request": self.request.to_dict(), "context": dict(self.context), "scratch": self.scratch}

    @classmethod
    def from_dict(cls, kind: JobKind, data: Mapping[str, Any]) -> Payload:
        """The child's side: the request checked by its one `from_dict` (RequestError naming the field)."""
        return cls(kind.request.from_dict(data["request"]), dict(data.get("context") or {}), data.get("scratch"))

    def input_paths(self) -> list[str]:
        """The files the job reads: what its sandbox binds read-only."""
        dataset = getattr(self.request, "dataset_path", None)
        refine = getattr(self.request, "refine", None)  # an evaluation's refinement reads the calibration data too
        calibration = refine["analysis"].dataset_path if refine else None
        return [self.request.model.path, *(p for p in (dataset, calibration) if p)]

    def output_paths(self) -> list[str]:
        """The folders the job writes: what its sandbox binds writable (none for most kinds)."""
        return [self.scratch] if self.scratch else []


@dataclass(frozen=True)
class JobKind:
    """One job kind. `build(session, job_id, blobs)` reads the rows into the Payload (parent);
    `run(payload, report)` computes the outputs recorded on the row (child). A kind whose child
    writes a file has `collect(job_id, payload, outputs, blobs)`, which moves it into the blob store
    before success is recorded and returns the outputs to record, and `discard(session, job_id,
    outputs, blobs)`, which removes it again when that success could not be recorded (cancelled or
    lost meanwhile), so a row never names a missing file.

    A kind whose work may run as sub-jobs (an analysis with options.shards) has `fan_out(session,
    job_id, owner)`, called once the attempt holds the row: the sub-jobs it created, to be offered
    (the attempt ends there and holds no worker while they run), or None to run the attempt itself.
    A sub-job kind has `progress(session, job_id)`, called after each of its progress writes, and
    `settle(session, job_id)`, called after each of its attempts: the jobs to offer now (its parent,
    once every sibling succeeded). `sweep(session)` runs on every reaper tick: jobs to offer."""

    name: str
    request: type
    build: Callable[[Session, str, Any], Payload]
    run: Callable[[Payload, Report], dict[str, Any]]
    collect: Callable[[str, Payload, dict[str, Any], Any], dict[str, Any]] | None = None
    discard: Callable[[Session, str, dict[str, Any], Any], None] | None = None
    fan_out: Callable[[Session, str, str], list[tuple[str, str]] | None] | None = None
    progress: Callable[[Session, str], None] | None = None
    settle: Callable[[Session, str], list[tuple[str, str]]] | None = None
    sweep: Callable[[Session], list[tuple[str, str]]] | None = None

    @property
    def record(self) -> type:
        return store.job_record(self.name)


def model_source(model, blobs) -> ModelSource:
    """The ModelSource of a model row: its format, where its bytes are, its architecture spec."""
    return ModelSource(model.format, str(blobs.model_path(model.sha256, model.format)), model.architecture,
                       model.hyperparams)


# analysis ----------------------------------------------------------------------------------------


def _analysis_request(s: Session, analysis, blobs) -> AnalysisRequest:
    model = store.get_model(s, model_id=analysis.model_id)
    dataset = store.get_dataset(s, dataset_id=analysis.dataset_id) if analysis.dataset_id else None
    return AnalysisRequest(
        model=model_source(model, blobs),
        dataset_path=str(blobs.path_for(dataset.sha256)) if dataset is not None else None,
        candidates=None if analysis.candidates is None else tuple(analysis.candidates),
        metric=analysis.metric,
        seed=analysis.seed,
        options=dict(analysis.options or {}),
    )


def _shard_count(analysis) -> int:
    count = (analysis.options or {}).get("shards", 1)
    return count if isinstance(count, int) and not isinstance(count, bool) else 1


def _build_analysis(s: Session, job_id: str, blobs) -> Payload:
    """The analysis's request; for a sharded one (its attempt after the shards) with their sums, which
    the child merges instead of measuring."""
    analysis = store.get_analysis(s, analysis_id=job_id)
    request = _analysis_request(s, analysis, blobs)
    if _shard_count(analysis) <= 1:
        return Payload(request)
    parts = shards.shards_of(s, analysis_id=job_id)
    unfinished = [p.shard_index + 1 for p in parts if p.status != "succeeded"]
    if len(parts) != _shard_count(analysis) or unfinished:
        raise RuntimeError(f"shards: the merge needs all {_shard_count(analysis)} shards succeeded;"
                           f" {len(parts)} exist, not succeeded: {unfinished}")
    return Payload(dataclasses.replace(request, shard_sums=tuple(p.sums for p in parts)))


def _run_analysis(payload: Payload, report: Report) -> dict[str, Any]:
    from workers.jobs import run_analysis_job
    from workers.table import SensitivityTable

    def merging(fraction: float, message: str) -> None:  # the last part of a sharded analysis's progress bar
        report(1 - shards.MERGE_SHARE * (1 - fraction), message)

    table = run_analysis_job(payload.request, report if payload.request.shard_sums is None else merging)
    return {"table": table, "problem": SensitivityTable.from_dict(table).stored_problem()}


def _fan_out_analysis(s: Session, job_id: str, owner: str) -> list[tuple[str, str]] | None:
    """A sharded analysis's first attempt creates its shards (service.storage.shards) and ends; None for
    an unsharded one, and for one whose shards exist (this attempt is the merge)."""
    analysis = store.get_analysis(s, analysis_id=job_id)
    count = _shard_count(analysis)
    if count <= 1 or shards.shards_of(s, analysis_id=job_id):
        return None
    ids = shards.fan_out(s, analysis_id=job_id, owner=owner, count=count)
    return [("analysis_shard", shard_id) for shard_id in ids or []]


def _sweep_analyses(s: Session) -> list[tuple[str, str]]:
    """Settle every analysis waiting on its shards (one a reaper failed or cancelled; a merge offer lost)."""
    return [("analysis", i) for i in shards.waiting_ids(s) if shards.settle(s, analysis_id=i)]


# analysis shard ----------------------------------------------------------------------------------


def _build_shard(s: Session, job_id: str, blobs) -> Payload:
    shard = store.get_job(s, kind="analysis_shard", job_id=job_id)
    request = _analysis_request(s, store.get_analysis(s, analysis_id=shard.analysis_id), blobs)
    return Payload(dataclasses.replace(request, shard=(shard.shard_index, shard.shard_count)))


def _run_shard(payload: Payload, report: Report) -> dict[str, Any]:
    from workers.jobs import run_shard_job

    return {"sums": run_shard_job(payload.request, report)}


def _shard_progress(s: Session, job_id: str) -> None:
    shards.aggregate_progress(s, analysis_id=store.get_job(s, kind="analysis_shard", job_id=job_id).analysis_id)


def _settle_shard(s: Session, job_id: str) -> list[tuple[str, str]]:
    analysis_id = store.get_job(s, kind="analysis_shard", job_id=job_id).analysis_id
    return [("analysis", analysis_id)] if shards.settle(s, analysis_id=analysis_id) else []


# evaluation --------------------------------------------------------------------------------------


def _build_evaluation(s: Session, job_id: str, blobs) -> Payload:
    """The plan's assignment with its baselines, or the frontier points fixed when the evaluation
    was accepted (their indices in the stored frontier go in the context)."""
    evaluation = store.get_evaluation(s, evaluation_id=job_id)
    analysis = store.get_analysis(s, analysis_id=evaluation.analysis_id)
    model = store.get_model(s, model_id=analysis.model_id)
    dataset = store.get_dataset(s, dataset_id=evaluation.dataset_id)
    asked = evaluation.request or {}
    table = analysis.table or {}
    common = dict(
        model=model_source(model, blobs),
        dataset_path=str(blobs.path_for(dataset.sha256)),
        problem=analysis.problem,
        groups={unit: tuple(layers) for unit, layers in (table.get("groups") or {}).items()},  # plans name units
        options=dict(asked.get("options") or {}),
        predicts=damage_predicts(table),  # a plan's measured KL is set against its predicted damage
    )
    if evaluation.target == "plan":
        plan = store.get_plan(s, plan_id=evaluation.plan_id)
        baselines = asked.get("baselines", True)
        # The plain HAWQ-v3 baseline needs raw Hutchinson traces: the analysis's own table when it is one.
        hutchinson = table.get("statistic") == "hessian_trace"
        rounds = asked.get("refine_rounds") or 0
        refine = ({"rounds": rounds, "analysis": _analysis_request(s, analysis, blobs), "table": table}
                  if rounds else None)  # measured on the analysis's calibration data, at the plan's bytes
        return Payload(EvaluationRequest(
            **common, assignment=dict(plan.assignment), hawq_table=analysis.table if hutchinson and baselines else None,
            baselines=None if baselines else (), refine=refine,
        ))
    points = asked["points"]
    return Payload(
        EvaluationRequest(**common, plans=tuple(dict(p["assignment"]) for p in points),
                          refine_trials=asked.get("refine_trials") or 0),
        context={"indices": [p["index"] for p in points]},
    )


def _run_evaluation(payload: Payload, report: Report) -> dict[str, Any]:
    from workers.evaluation_jobs import evaluate_frontier_job, run_evaluation_job

    if payload.request.target == "plan":
        return {"result": run_evaluation_job(payload.request, report)}
    result = evaluate_frontier_job(payload.request, report)
    for row, index in zip(result["points"], payload.context["indices"], strict=True):
        row["frontier_index"] = index  # which point of the stored frontier it measured
    return {"result": result, "rank_agreement": result["rank_agreement"]}


# export ------------------------------------------------------------------------------------------


def _build_export(s: Session, job_id: str, blobs) -> Payload:
    """The plan and its model, and a fresh scratch folder (the one place the child may write)."""
    from service.core import exports

    export = store.get_export(s, export_id=job_id)
    plan = store.get_plan(s, plan_id=export.plan_id)
    analysis = store.get_analysis(s, analysis_id=plan.analysis_id)
    model = store.get_model(s, model_id=analysis.model_id)
    scratch = exports.scratch_dir(blobs, job_id)
    return Payload(
        ExportRequest(format=export.format, table=analysis.table, assignment=dict(plan.assignment),
                      model=model_source(model, blobs), out=str(scratch / "export.bin"),
                      root_type=exports.BUILTIN_ROOT if model.architecture else "Model"),
        scratch=str(scratch),
    )


def _run_export(payload: Payload, report: Report) -> dict[str, Any]:
    from workers.jobs import run_export_job

    return run_export_job(payload.request, report)


def _collect_export(job_id: str, payload: Payload, outputs: dict[str, Any], blobs) -> dict[str, Any]:
    from service.core import exports

    return {**outputs, **exports.commit_export(blobs, job_id, Path(payload.request.out))}


def _discard_export(s: Session, job_id: str, outputs: dict[str, Any], blobs) -> None:
    from service.core import exports

    exports.discard_export(blobs, store.get_export(s, export_id=job_id), outputs["sha256"])


KINDS: dict[str, JobKind] = {
    kind.name: kind
    for kind in (
        JobKind("analysis", AnalysisRequest, _build_analysis, _run_analysis, fan_out=_fan_out_analysis,
                sweep=_sweep_analyses),
        JobKind("evaluation", EvaluationRequest, _build_evaluation, _run_evaluation),
        JobKind("export", ExportRequest, _build_export, _run_export, collect=_collect_export, discard=_discard_export),
        JobKind("analysis_shard", AnalysisRequest, _build_shard, _run_shard, progress=_shard_progress,
                settle=_settle_shard),
    )
}


def get_kind(name: str) -> JobKind:
    """The kind `name`; ValueError listing the valid kinds."""
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"kind: unknown job kind {name!r}; valid kinds: {', '.join(KINDS)}") from None
