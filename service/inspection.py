"""Model inspection at upload time, in a child process with resource limits (never in the API process)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from service.config import Settings
from service.errors import InvalidInput
from service.jobs.process import Limits, run_child


def inspect_upload(
    settings: Settings, *, path: Path, fmt: str, architecture: str | None, hyperparams: dict | None
) -> list[dict[str, Any]]:
    """Build / load the model in a child and return its layer inventory; InvalidInput naming the field."""
    source = {"format": fmt, "path": str(path), "architecture": architecture, "hyperparams": hyperparams}
    limits = Limits(settings.job_memory_limit_mb, settings.job_cpu_limit_s, wall_s=settings.inspect_timeout_s)
    rc, out, err = run_child(["inspect"], stdin=json.dumps(source), limits=limits, env={})
    try:
        result = json.loads(out.strip().splitlines()[-1]) if out.strip() else None
    except json.JSONDecodeError:
        result = None
    if rc != 0 or result is None:
        tail = " ".join((err or "").strip().splitlines()[-2:])
        raise InvalidInput("file", f"the model could not be loaded (process exited {rc}): {tail}")
    if not result["ok"]:
        raise InvalidInput(result.get("field") or "file", result["error"])
    if not result["layers"]:
        raise InvalidInput("file", "the model has no quantizable layers (Linear / Conv / Embedding)")
    return result["layers"]
