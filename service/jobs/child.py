"""Entry point of a job process: `python -m service.jobs.child KIND ID` (KIND: analysis, evaluation, export)
or `... inspect` / `... export`; the request is JSON on stdin, the answer JSON lines on stdout.

This is the only place where the service side calls into torch code, and it runs sandboxed
(service.jobs.sandbox): it never talks to the database or the blob store. The parent (the job runner)
reads the rows and builds the request (`prepare`, run in the parent), the child computes (`WORK`) and
writes progress lines and one outcome line; the parent records them, each write conditional on the
attempt's owner token, so a presumed-dead attempt can never overwrite a newer one. Bad input and out of memory fail the job at
once (the analysis lowers its own batch sizes first); a failure that may pass (database or file
system hiccup) exits with TRANSIENT_EXIT and leaves the decision to retry to the parent, which knows
the attempt count and the backoff.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
from pathlib import Path

from service.errors import StorageError
from service import store

TRANSIENT_EXIT = 75  # EX_TEMPFAIL: the attempt failed in a way a later attempt may not


_MEMORY = ("out of memory", "allocate memory", "failed to map segment")


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocator failure (MemoryError, CUDA / CPU allocator, mmap) anywhere in the exception chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MemoryError) or any(m in str(current).lower() for m in _MEMORY):
            return True
        current = current.__cause__ or current.__context__
    return False


def is_transient(exc: BaseException) -> bool:
    """Failures of the machine, not of the input: worth another attempt. Bad input (ValueError, which
    the workers' ModelLoadError and DatasetError are) and bugs fail at once. So does running out of
    memory: the analysis has already lowered its batch sizes as far as they go (workers.analysis), and
    a retry with the same request would meet the same wall; the error says what to lower."""
    if is_out_of_memory(exc):
        return False
    if isinstance(exc, (StorageError, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, (ValueError, FileNotFoundError)):
        return False
    return isinstance(exc, OSError)


class _Reporter:
    """Progress callback for a job: throttled JSON lines on the protocol stream (the parent stores them)."""

    def __init__(self, out, min_interval: float = 0.5):
        self.out = out
        self.min_interval = min_interval
        self._last = 0.0
        self._latest = 0.0
        self._lock = threading.Lock()

    def __call__(self, fraction: float, message: str) -> None:
        with self._lock:
            # Progress never moves backwards, whatever the stages report.
            self._latest = max(fraction, self._latest)
            now = time.monotonic()
            if now - self._last < self.min_interval:
                return
            self._last = now
            emit(self.out, {"progress": self._latest, "message": message})


def emit(out, line: dict) -> None:
    out.write(json.dumps(line) + "\n")
    out.flush()


def protocol_stream():
    """The real stdout, kept for the protocol; fd 1 then points at stderr, so whatever a library prints
    (Python or C) cannot corrupt the answer."""
    import os

    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def model_source(model, blobs) -> dict:
    """The JSON model source a workers job loads: format, where the bytes are, the architecture spec."""
    return {
        "format": model.format,
        "path": str(blobs.model_path(model.sha256, model.format)),
        "architecture": model.architecture,
        "hyperparams": model.hyperparams,
    }


def build_request(analysis, model, dataset, blobs) -> dict:
    return {
        "model": model_source(model, blobs),
        "dataset_path": str(blobs.path_for(dataset.sha256)) if dataset is not None else None,
        "candidates": list(analysis.candidates),
        "metric": analysis.metric,
        "seed": analysis.seed,
        "options": dict(analysis.options or {}),
    }


def build_evaluation_request(evaluation, analysis, model, dataset, plan, blobs) -> dict:
    """The worker request of an evaluation (workers.evaluation_jobs): the plan's assignment with its
    baselines, or the frontier points fixed when the evaluation was accepted."""
    asked = evaluation.request or {}
    request = {
        "model": model_source(model, blobs),
        "dataset_path": str(blobs.path_for(dataset.sha256)),
        "problem": analysis.problem,
        "groups": (analysis.table or {}).get("groups") or {},  # plans name units: the layers of each
        "options": dict(asked.get("options") or {}),
    }
    if evaluation.target == "plan":
        # The plain HAWQ-v3 baseline needs raw Hutchinson traces: the analysis's own table when it is one.
        hutchinson = (analysis.table or {}).get("statistic") == "hessian_trace"
        request.update(
            assignment=dict(plan.assignment),
            hawq_table=analysis.table if hutchinson and asked.get("baselines", True) else None,
            baselines=None if asked.get("baselines", True) else [],
        )
    else:
        request.update(
            plans=[p["assignment"] for p in asked["points"]], refine_trials=asked.get("refine_trials") or 0
        )
    return request


def _prepare_analysis(s, job_id: str, blobs) -> dict:
    analysis = store.get_analysis(s, analysis_id=job_id)
    model = store.get_model(s, model_id=analysis.model_id)
    dataset = store.get_dataset(s, dataset_id=analysis.dataset_id) if analysis.dataset_id else None
    return {"request": build_request(analysis, model, dataset, blobs)}


def _analysis_work(payload: dict, report) -> dict:
    from workers.jobs import run_analysis_job
    from workers.table import SensitivityTable

    table = run_analysis_job(payload["request"], report)
    return {"table": table, "problem": SensitivityTable.from_dict(table).stored_problem()}


def _prepare_evaluation(s, job_id: str, blobs) -> dict:
    evaluation = store.get_evaluation(s, evaluation_id=job_id)
    analysis = store.get_analysis(s, analysis_id=evaluation.analysis_id)
    model = store.get_model(s, model_id=analysis.model_id)
    dataset = store.get_dataset(s, dataset_id=evaluation.dataset_id)
    plan = store.get_plan(s, plan_id=evaluation.plan_id) if evaluation.plan_id else None
    indices = [p["index"] for p in (evaluation.request or {}).get("points", [])]
    request = build_evaluation_request(evaluation, analysis, model, dataset, plan, blobs)
    return {"request": request, "indices": indices}


def _evaluation_work(payload: dict, report) -> dict:
    from workers.evaluation_jobs import evaluate_frontier_job, run_evaluation_job

    request = payload["request"]
    if "plans" not in request:
        return {"result": run_evaluation_job(request, report)}
    result = evaluate_frontier_job(request, report)
    for row, index in zip(result["points"], payload["indices"], strict=True):
        row["frontier_index"] = index  # which point of the stored frontier it measured
    return {"result": result, "rank_agreement": result["rank_agreement"]}


def _prepare_export(s, job_id: str, blobs) -> dict:
    """The plan and its model, and a fresh scratch folder (the one place the child may write)."""
    from service import exports

    export = store.get_export(s, export_id=job_id)
    plan = store.get_plan(s, plan_id=export.plan_id)
    analysis = store.get_analysis(s, analysis_id=plan.analysis_id)
    model = store.get_model(s, model_id=analysis.model_id)
    request = {"format": export.format, "table": analysis.table, "assignment": dict(plan.assignment),
               "model": model_source(model, blobs)}
    scratch = exports.scratch_dir(blobs, job_id)
    return {"request": {**request, "out": str(scratch / "export.bin")}, "scratch": str(scratch)}


def _export_work(payload: dict, report) -> dict:
    from service.exports import BUILTIN_ROOT
    from workers.exports import ExportPlan, get_exporter

    request = payload["request"]
    root = BUILTIN_ROOT if request["model"].get("architecture") else "Model"
    plan = ExportPlan.from_table(request["table"], request["assignment"], model=request["model"], root_type=root)
    written = get_exporter(request["format"]).write(plan, request["out"], report)
    return {"filename": written.filename, "media_type": written.media_type, "warnings": list(written.warnings)}


def _collect_export(job_id: str, payload: dict, outputs: dict, blobs) -> dict:
    from service import exports

    return {**outputs, **exports.commit_export(blobs, job_id, Path(payload["request"]["out"]))}


def _discard_export(s, job_id: str, outputs: dict, blobs) -> None:
    from service import exports

    exports.discard_export(blobs, store.get_export(s, export_id=job_id), outputs["sha256"])


# What each job kind reads from the database (in the parent) and the work itself (torch, in here only).
PREPARE = {"analysis": _prepare_analysis, "evaluation": _prepare_evaluation, "export": _prepare_export}
WORK = {"analysis": _analysis_work, "evaluation": _evaluation_work, "export": _export_work}
# Kinds whose child writes a file (into payload["scratch"]): the runner moves it into the blob store
# before recording success (COLLECT, in the parent) and removes it again when the success could not
# be recorded (DISCARD: cancelled or lost meanwhile).
COLLECT = {"export": _collect_export}
DISCARD = {"export": _discard_export}


def input_paths(payload: dict) -> list[str]:
    """The files a job reads: what its sandbox binds read-only."""
    request = payload["request"]
    paths = [request["model"]["path"]]
    if request.get("dataset_path"):
        paths.append(request["dataset_path"])
    return paths


def output_paths(payload: dict) -> list[str]:
    """The folders a job writes: what its sandbox binds writable (none for most kinds)."""
    return [payload["scratch"]] if payload.get("scratch") else []


def run_job(kind: str, job_id: str) -> int:
    """The payload from `PREPARE[kind]` on stdin; progress lines, then one outcome line, on stdout."""
    out = protocol_stream()
    payload = json.loads(sys.stdin.read())
    reporter = _Reporter(out)
    try:
        reporter(0.01, "loading model and data")
        outputs = WORK[kind](payload, reporter)
    except Exception as exc:  # every failure becomes the job's error text, or a retry
        message = f"{exc.__class__.__name__}: {exc}"
        traceback.print_exc()
        if is_transient(exc):
            print(f"transient: {message}", file=sys.stderr)
            return TRANSIENT_EXIT
        from workers.errors import WorkersError  # torch-free

        if is_out_of_memory(exc) and not isinstance(exc, WorkersError):  # the analysis's own says what to cap
            message += (" (out of memory: the job process may use BITPLAN_JOB_MEMORY_LIMIT_MB of address space;"
                        " raise it, or lower options.batch_size / options.max_length)")
        emit(out, {"outcome": "failed", "error": message})
        return 0
    emit(out, {"outcome": "succeeded", "outputs": outputs})
    return 0


def run_inspect() -> int:
    """Inspect an uploaded model; prints {"ok": true, "layers": [...], "inputs": {...} | null} or
    {"ok": false, "error": "..."}."""
    source = json.loads(sys.stdin.read())
    field = "file"
    try:
        from workers.architectures import build_model
        from workers.jobs import describe_model_job

        if source.get("architecture") is not None:
            field = "spec"  # errors in building the architecture are the spec's fault
            build_model(source["architecture"], source.get("hyperparams") or {})
            field = "file"
        described = describe_model_job(source)
        print(json.dumps({"ok": True, "layers": described["layers"], "inputs": described["inputs"]}))
    except Exception as exc:
        message = str(exc).strip() or exc.__class__.__name__
        if field == "spec" and not message.startswith("architecture"):
            field = "spec.hyperparams"
        print(json.dumps({"ok": False, "field": field, "error": message, "type": exc.__class__.__name__}))
    return 0


def run_export() -> int:
    """Export a plan in a format that needs the model (the fake-quantized checkpoint); the request is
    JSON on stdin, one JSON line of outcome on stdout (service.exports.run_export_child)."""
    from service.exports import run_export_child

    print(json.dumps(run_export_child(json.loads(sys.stdin.read()))))
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] and argv[0] in WORK and len(argv) == 2:
        return run_job(*argv)
    if argv == ["inspect"]:
        return run_inspect()
    if argv == ["export"]:
        return run_export()
    kinds = "|".join(PREPARE)
    print(f"usage: python -m service.jobs.child {{{kinds}}} ID | inspect | export", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
