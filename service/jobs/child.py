"""Entry point of a job process: `python -m service.jobs.child KIND ID` (KIND: a key of
service.jobs.kinds.KINDS) or `... inspect` / `... export`; the request is JSON on stdin, the answer
JSON lines on stdout.

This is the only place where the service side calls into torch code, and it runs sandboxed
(service.jobs.sandbox): it never talks to the database or the blob store. The parent (the job runner)
reads the rows and builds the request (the kind's `build`), the child parses it (the request's
`from_dict`, its one check), computes (the kind's `run`) and writes progress lines and one outcome line; the parent records them, each write conditional on the
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

from service.errors import StorageError

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


def run_job(kind: str, job_id: str) -> int:
    """The Payload its kind's `build` made (JSON) on stdin; progress lines, then one outcome line, on
    stdout. A request that does not parse fails the job like any bad input."""
    from service.jobs.kinds import Payload, get_kind

    out = protocol_stream()
    job_kind = get_kind(kind)
    data = json.loads(sys.stdin.read())
    reporter = _Reporter(out)
    try:
        payload = Payload.from_dict(job_kind, data)
        reporter(0.01, "loading model and data")
        outputs = job_kind.run(payload, reporter)
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
    JSON on stdin, one JSON line of outcome on stdout (service.core.exports.run_export_child)."""
    from service.core.exports import run_export_child

    print(json.dumps(run_export_child(json.loads(sys.stdin.read()))))
    return 0


def main(argv: list[str]) -> int:
    from service.jobs.kinds import KINDS

    if argv[:1] and argv[0] in KINDS and len(argv) == 2:
        return run_job(*argv)
    if argv == ["inspect"]:
        return run_inspect()
    if argv == ["export"]:
        return run_export()
    kinds = "|".join(KINDS)
    print(f"usage: python -m service.jobs.child {{{kinds}}} ID | inspect | export", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
