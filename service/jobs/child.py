"""Entry point of a job process: `python -m service.jobs.child analysis ID OWNER` or `... inspect` (JSON on stdin).

This is the only place where the service side calls into torch code. It talks to the database
itself (progress, result), every write conditional on OWNER, the token of the attempt it runs, so a
presumed-dead attempt can never overwrite a newer one. Bad input fails the analysis at once; a failure
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

    def __init__(self, url: str, analysis_id: str, owner: str | None, min_interval: float = 0.5):
        self.url = url
        self.analysis_id = analysis_id
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
                s, analysis_id=self.analysis_id, fraction=fraction, message=message, owner=self.owner
            )


def _heartbeat(reporter: _Reporter, stop: threading.Event, every: float = 5.0) -> None:
    while not stop.wait(every):
        try:
            reporter.flush()
        except Exception:  # a missed beat is harmless; the next one retries
            pass


def build_request(analysis, model, dataset, blob_path) -> dict:
    return {
        "model": {
            "format": model.format,
            "path": str(blob_path(model.sha256)),
            "architecture": model.architecture,
            "hyperparams": model.hyperparams,
        },
        "dataset_path": str(blob_path(dataset.sha256)) if dataset is not None else None,
        "candidates": list(analysis.candidates),
        "metric": analysis.metric,
        "seed": analysis.seed,
        "options": dict(analysis.options or {}),
    }


def run_analysis(analysis_id: str, owner: str | None = None) -> int:
    from service.blobs import BlobStore

    settings = get_settings()
    url = settings.resolved_database_url
    blobs = BlobStore(settings.data_dir / "blobs")
    with session_scope(url) as s:
        analysis = store.get_analysis(s, analysis_id=analysis_id)
        model = store.get_model(s, model_id=analysis.model_id)
        dataset = store.get_dataset(s, dataset_id=analysis.dataset_id) if analysis.dataset_id else None
        request = build_request(analysis, model, dataset, blobs.path_for)
        owner = owner or analysis.owner

    reporter = _Reporter(url, analysis_id, owner)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(reporter, stop), daemon=True)
    beat.start()
    try:
        from solver import problem_to_dict
        from workers.jobs import run_analysis_job
        from workers.table import SensitivityTable

        reporter(0.01, "loading model and data")
        table = run_analysis_job(request, reporter)
        problem = problem_to_dict(SensitivityTable.from_dict(table).to_problem())
    except Exception as exc:  # every failure becomes the analysis's error text, or a retry
        stop.set()
        message = f"{exc.__class__.__name__}: {exc}"
        traceback.print_exc()
        if is_transient(exc):
            print(f"transient: {message}", file=sys.stderr)
            return TRANSIENT_EXIT
        with session_scope(url) as s:
            store.finish_attempt(s, analysis_id=analysis_id, owner=owner, status="failed", error=message)
        return 0
    stop.set()
    with session_scope(url) as s:
        store.finish_attempt(
            s, analysis_id=analysis_id, owner=owner, status="succeeded", table=table, problem=problem
        )
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
    if argv[:1] == ["analysis"] and len(argv) in (2, 3):
        return run_analysis(*argv[1:])
    if argv == ["inspect"]:
        return run_inspect()
    if argv == ["export"]:
        return run_export()
    print("usage: python -m service.jobs.child analysis ID [OWNER] | inspect", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
