"""Plans exported in the formats engines read (`workers.exports`), for the API.

Config formats are pure Python and answer synchronously in the API process. The fake-quantized
checkpoint needs torch and the model file, so it is built synchronously in a child process with the
job limits (`python -m service.jobs.child export`, plan on stdin, safetensors bytes written to a file
in the data directory): it is one load + one quantization pass per layer, seconds for the models this
service holds, so a job row and polling would add latency and nothing else.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from service.config import Settings
from service.errors import InvalidInput

BUILTIN_ROOT = "Sequential"  # the built-in architectures are nn.Sequential with named children


def export_plan(
    settings: Settings, *, fmt: str, table: dict[str, Any], assignment: dict[str, str], model: dict[str, Any]
):
    """The `Export` of a plan; InvalidInput("format", ...) for unknown formats or plans the format
    cannot express."""
    from workers.exports import ExportError, ExportPlan, get_exporter

    try:
        exporter = get_exporter(fmt)
    except ValueError as exc:
        raise InvalidInput("format", str(exc)) from exc
    root = BUILTIN_ROOT if model.get("architecture") else "Model"
    plan = ExportPlan.from_table(table, assignment, model=model, root_type=root)
    if exporter.needs_model:
        return _export_in_child(settings, fmt, table, assignment, model)
    try:
        return exporter.export(plan)
    except ExportError as exc:
        raise InvalidInput("format", str(exc)) from exc


def _export_in_child(settings: Settings, fmt: str, table, assignment, model):
    from service.jobs.process import Limits, run_child
    from service.jobs.sandbox import Sandbox, sandbox_mode_for
    from workers.exports import Export

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.data_dir) as tmp:
        out = Path(tmp) / "export.bin"
        request = {"format": fmt, "table": table, "assignment": assignment, "model": model, "out": str(out)}
        limits = Limits(settings.job_memory_limit_mb, settings.job_cpu_limit_s, wall_s=settings.job_cpu_limit_s)
        sandbox = Sandbox(read_only=[model["path"]], writable=[tmp]) if sandbox_mode_for(settings.sandbox) else None
        if sandbox is None and model.get("format") == "pt2":
            raise InvalidInput("format", "a pt2 model is only ever loaded in the sandbox, which is off on this server")
        rc, stdout, stderr = run_child(["export"], stdin=json.dumps(request), limits=limits, sandbox=sandbox)
        try:
            result = json.loads(stdout.strip().splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            tail = " ".join((stderr or "").strip().splitlines()[-2:])
            from service.redact import redact_paths

            raise InvalidInput("format", redact_paths(f"the export process failed (exit {rc}): {tail}"), status=500) from None
        if not result.get("ok"):
            from service.redact import redact_paths

            raise InvalidInput("format", redact_paths(result.get("error", "export failed")))
        return Export(out.read_bytes(), result["media_type"], result["filename"], tuple(result.get("warnings", ())))


def run_export_child(request: dict[str, Any]) -> dict[str, Any]:
    """Body of `python -m service.jobs.child export`: writes the export to request["out"]."""
    from workers.exports import ExportPlan, get_exporter

    try:
        exporter = get_exporter(request["format"])
        root = BUILTIN_ROOT if request["model"].get("architecture") else "Model"
        plan = ExportPlan.from_table(request["table"], request["assignment"], model=request["model"], root_type=root)
        exported = exporter.export(plan)
    except Exception as exc:  # noqa: BLE001 - reported to the API as the field's error
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    Path(request["out"]).write_bytes(exported.content)
    return {"ok": True, "media_type": exported.media_type, "filename": exported.filename,
            "warnings": list(exported.warnings)}


def proxy_quality_for(analysis, siblings) -> dict[str, Any]:
    """Rank agreement of `analysis`'s table (and of every other succeeded analysis of the same
    model and data) with the measured `loss_delta` table among them."""
    from workers.proxy_quality import proxy_quality

    tables = {a.metric: a.table for a in [analysis, *siblings] if a.table is not None and a.status == "succeeded"}
    measured = tables.pop("loss_delta", None)
    if measured is None:
        raise InvalidInput(
            "analysis_id",
            "no succeeded loss_delta analysis of this model and dataset to compare with: run one"
            " (metric \"loss_delta\") and ask again",
            status=409,
        )
    return proxy_quality(tables, measured)
