"""Model inspection at upload time, in a sandboxed child process with resource limits (never in the API
process): the upload is the only file it can see, its answer comes back on stdout."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.config import Settings
from service.errors import InvalidInput
from service.jobs.process import Limits, run_child
from service.jobs.sandbox import Sandbox, sandbox_mode_for
from service.redact import redact_paths


@dataclass(frozen=True)
class Inspection:
    """What the child found: the layer inventory, and what one call of the model takes (None: unknown)."""

    layers: list[dict[str, Any]]
    inputs: dict[str, Any] | None


def inspect_upload(
    settings: Settings, *, path: Path, fmt: str, architecture: str | None, hyperparams: dict | None
) -> Inspection:
    """Build / load the model in a child and return its layer inventory and input signature;
    InvalidInput naming the field."""
    source = {"format": fmt, "path": str(path), "architecture": architecture, "hyperparams": hyperparams}
    limits = Limits(settings.job_memory_limit_mb, settings.job_cpu_limit_s, wall_s=settings.inspect_timeout_s)
    sandbox = Sandbox(read_only=[path]) if sandbox_mode_for(settings.sandbox) else None
    if sandbox is None and fmt == "pt2":  # the route refuses these first; never load one unsandboxed
        raise InvalidInput("file", ".pt2 archives are loaded only in the job sandbox, which is not available here")
    rc, out, err = run_child(["inspect"], stdin=json.dumps(source), limits=limits, sandbox=sandbox)
    try:
        result = json.loads(out.strip().splitlines()[-1]) if out.strip() else None
    except json.JSONDecodeError:
        result = None
    if rc != 0 or result is None:
        tail = " ".join((err or "").strip().splitlines()[-2:])
        raise InvalidInput("file", redact_paths(f"the model could not be loaded (process exited {rc}): {tail}"))
    if not result["ok"]:
        raise InvalidInput(result.get("field") or "file", redact_paths(result["error"]))
    if not result["layers"]:
        raise InvalidInput("file", "the model has no quantizable layers (Linear / Conv / Embedding)")
    return Inspection(result["layers"], result.get("inputs"))
