"""Entry point of a job process: `python -m service.jobs.child KIND ID OWNER` (KIND: analysis, evaluation)
or `... inspect` / `... export` (JSON on stdin).

This is the only place where the service side calls into torch code. It talks to the database
itself (progress, result), every write conditional on OWNER, the token of the attempt it runs, so a
presumed-dead attempt can never overwrite a newer one. Bad input fails the job at once; a failure
that may pass (database or file system hiccup, memory) exits with TRANSIENT_EXIT and leaves the
decision to retry to the parent, which knows the attempt count and the backoff.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback

from service.config import get_settings
from service.db.session import session_scope
from service.errors import StorageError
from service import store

TRANSIENT_EXIT = 75  # EX_TEMPFAIL: the attempt failed in a way a later attempt may not


def is_transient(exc: BaseException) -> bool:
    """Failures of the machine, not of the input: worth another attempt. Bad input (ValueError, which
    the workers' ModelLoadError and DatasetError are) and bugs fail at once."""
    if isinstance(exc, (StorageError, MemoryError, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, (ValueError, FileNotFoundError)):
        return False
    text = str(exc).lower()
    memory = ("out of memory", "allocate memory", "failed to map segment")
    return isinstance(exc, OSError) or any(m in text for m in memory)


class _Reporter:
    """Progress callback for a job: throttled DB writes that double as the heartbeat."""

    def __init__(self, url: str, kind: str, job_id: str, owner: str | None, min_interval: float = 0.5):
        self.url = url
        self.kind = kind
        self.job_id = job_id
        self.owner = owner
        self.min_interval = min_interval
        self._last = 0.0
        self._latest = (0.0, "starting")
        self._lock = threading.Lock()

    def __call__(self, fraction: float, message: str) -> None:
        with self._lock:
            # Progress never moves backwards, whatever the stages report.
            self._latest = (max(fraction, self._latest[0]), message)
            now = time.monotonic()
            if now - self._last < self.min_interval:
                return
            self._last = now
        self.flush()

    def flush(self) -> None:
        fraction, message = self._latest
        with session_scope(self.url) as s:
            store.report_progress(
                s, kind=self.kind, job_id=self.job_id, fraction=fraction, message=message, owner=self.owner
            )


def _heartbeat(reporter: _Reporter, stop: threading.Event, every: float = 5.0) -> None:
    while not stop.wait(every):
        try:
            reporter.flush()
        except Exception:  # a missed beat is harmless; the next one retries
            pass


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


def _prepare_analysis(s, job_id: str, blobs) -> tuple[dict, object]:
    analysis = store.get_analysis(s, analysis_id=job_id)
    model = store.get_model(s, model_id=analysis.model_id)
    dataset = store.get_dataset(s, dataset_id=analysis.dataset_id) if analysis.dataset_id else None

    def work(request: dict, report) -> dict:
        from solver import problem_to_dict
        from workers.jobs import run_analysis_job
        from workers.table import SensitivityTable

        table = run_analysis_job(request, report)
        return {"table": table, "problem": problem_to_dict(SensitivityTable.from_dict(table).to_problem())}

    return build_request(analysis, model, dataset, blobs), work


def _prepare_evaluation(s, job_id: str, blobs) -> tuple[dict, object]:
    evaluation = store.get_evaluation(s, evaluation_id=job_id)
    analysis = store.get_analysis(s, analysis_id=evaluation.analysis_id)
    model = store.get_model(s, model_id=analysis.model_id)
    dataset = store.get_dataset(s, dataset_id=evaluation.dataset_id)
    plan = store.get_plan(s, plan_id=evaluation.plan_id) if evaluation.plan_id else None
    indices = [p["index"] for p in (evaluation.request or {}).get("points", [])]

    def work(request: dict, report) -> dict:
        from workers.evaluation_jobs import evaluate_frontier_job, run_evaluation_job

        if "plans" not in request:
            return {"result": run_evaluation_job(request, report)}
        result = evaluate_frontier_job(request, report)
        for row, index in zip(result["points"], indices, strict=True):
            row["frontier_index"] = index  # which point of the stored frontier it measured
        return {"result": result, "rank_agreement": result["rank_agreement"]}

    request = build_evaluation_request(evaluation, analysis, model, dataset, plan, blobs)
    return request, work


# What each job kind reads from the database before its work, and the work itself (torch, in here only).
PREPARE = {"analysis": _prepare_analysis, "evaluation": _prepare_evaluation}


def run_job(kind: str, job_id: str, owner: str | None = None) -> int:
    from service.blobs import BlobStore

    settings = get_settings()
    url = settings.resolved_database_url
    blobs = BlobStore(settings.data_dir / "blobs")
    with session_scope(url) as s:
        request, work = PREPARE[kind](s, job_id, blobs)
        owner = owner or store.get_job(s, kind=kind, job_id=job_id).owner

    job = dict(kind=kind, job_id=job_id, owner=owner)
    reporter = _Reporter(url, kind, job_id, owner)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(reporter, stop), daemon=True)
    beat.start()
    try:
        reporter(0.01, "loading model and data")
        outputs = work(request, reporter)
    except Exception as exc:  # every failure becomes the job's error text, or a retry
        stop.set()
        message = f"{exc.__class__.__name__}: {exc}"
        traceback.print_exc()
        if is_transient(exc):
            print(f"transient: {message}", file=sys.stderr)
            return TRANSIENT_EXIT
        with session_scope(url) as s:
            store.finish_attempt(s, **job, status="failed", error=message)
        return 0
    stop.set()
    with session_scope(url) as s:
        store.finish_attempt(s, **job, status="succeeded", outputs=outputs)
    return 0


def run_inspect() -> int:
    """Inspect an uploaded model; prints {"ok": true, "layers": [...]} or {"ok": false, "error": "..."}."""
    source = json.loads(sys.stdin.read())
    field = "file"
    try:
        from workers.architectures import build_model
        from workers.jobs import inspect_model_job

        if source.get("architecture") is not None:
            field = "spec"  # errors in building the architecture are the spec's fault
            build_model(source["architecture"], source.get("hyperparams") or {})
            field = "file"
        layers = inspect_model_job(source)
        print(json.dumps({"ok": True, "layers": layers}))
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
    if argv[:1] and argv[0] in PREPARE and len(argv) in (2, 3):
        return run_job(*argv)
    if argv == ["inspect"]:
        return run_inspect()
    if argv == ["export"]:
        return run_export()
    kinds = "|".join(PREPARE)
    print(f"usage: python -m service.jobs.child {{{kinds}}} ID [OWNER] | inspect | export", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
