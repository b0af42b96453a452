"""Plans exported in the formats engines read (`workers.exports`), for the API.

Config formats are pure Python and answer synchronously in the API process. A format that needs the
model (the fake-quantized checkpoint: torch, one load and one round trip per layer, a file as large
as the float model) is a job, the kind "export" (`POST /v1/plans/{id}/exports`): queued, run in a
sandboxed child that writes into a scratch folder of the blob store's staging area, moved into the
store (`export_path`) only once it succeeded, so failed or cancelled attempts leave nothing behind.
`GET /v1/plans/{id}/export?format=safetensors` still builds it while the request waits for models up
to SYNC_CHECKPOINT_MAX_BYTES (a child with the job limits, seconds for those) and points larger ones
at the job.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from service.config import Settings
from service.errors import InvalidInput

BUILTIN_ROOT = "Sequential"  # the built-in architectures are nn.Sequential with named children
# Above this model size GET .../export?format=safetensors answers 409 pointing at the export job: a
# request should not hold an API thread (and a pooled connection) for a large model's round trips.
SYNC_CHECKPOINT_MAX_BYTES = 64 * 1024 * 1024


def job_formats() -> list[str]:
    """Formats built by the export job: those that open the model (and are available here)."""
    from workers.exports import exporters

    return sorted(name for name, e in exporters().items() if e.needs_model)


def export_plan(
    settings: Settings, *, fmt: str, table: dict[str, Any], assignment: dict[str, str], model: dict[str, Any],
    model_bytes: int = 0, plan_id: str = "{id}",
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
        if model_bytes > SYNC_CHECKPOINT_MAX_BYTES:
            raise InvalidInput("format", (
                f"the {fmt} export of a model of {model_bytes} bytes is built by a job: POST /v1/plans/{plan_id}/exports"
                f' with {{"format": "{fmt}"}}, follow the Location, then GET its /file (answered at once up to'
                f" {SYNC_CHECKPOINT_MAX_BYTES} bytes)"), status=409)
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
        exported = exporter.write(plan, request["out"])  # the export job's own writer: the same file
    except Exception as exc:  # noqa: BLE001 - reported to the API as the field's error
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True, "media_type": exported.media_type, "filename": exported.filename,
            "warnings": list(exported.warnings)}


def scratch_dir(blobs, export_id: str) -> Path:
    """A fresh folder for one attempt's output, the only place its sandbox may write. It is in the
    blob store's staging area, so a worker killed mid-export leaves nothing the sweep does not remove
    (the runner touches it while the job runs)."""
    staging = blobs.root / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"export-{export_id}-", dir=staging))


def export_path(blobs, export_id: str, sha256: str) -> Path:
    """Where a succeeded export's file lives: per export, named by its content."""
    return blobs.root / "exports" / export_id / sha256


def commit_export(blobs, export_id: str, written: Path) -> dict[str, Any]:
    """Move an attempt's finished file into the store (a rename: readers never see half of it);
    its sha256 and size for the row."""
    digest = hashlib.sha256()
    with open(written, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    sha256 = digest.hexdigest()
    target = export_path(blobs, export_id, sha256)
    target.parent.mkdir(parents=True, exist_ok=True)
    size = written.stat().st_size
    os.replace(written, target)
    return {"sha256": sha256, "size_bytes": size}


def discard_export(blobs, rec, sha256: str) -> None:
    """Remove a committed file whose attempt could not record it (cancelled or lost meanwhile),
    unless the row holds it after all (a newer attempt wrote the same bytes and succeeded)."""
    if rec.status == "succeeded" and rec.sha256 == sha256:
        return
    export_path(blobs, rec.id, sha256).unlink(missing_ok=True)
    try:
        export_path(blobs, rec.id, sha256).parent.rmdir()
    except OSError:  # another attempt's file is there, or it is gone already
        pass


def remove_scratch(path: str | Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


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


def export_stored_plan(session, settings: Settings, blobs, *, plan_id: str, fmt: str, owned_by: str | None):
    """The `Export` of a stored plan (GET /v1/plans/{id}/export): its analysis's table and its model's
    source, looked up here so the route only parses and shapes. NotFound for another owner's plan."""
    from service.storage import store
    from service.jobs.kinds import model_source  # the job kinds' own, not the child entry point

    rec = store.get_plan(session, plan_id=plan_id, owned_by=owned_by)
    analysis = store.get_analysis(session, analysis_id=rec.analysis_id)
    model = store.get_model(session, model_id=analysis.model_id)
    return export_plan(
        settings, fmt=fmt, table=analysis.table, assignment=dict(rec.assignment),
        model=model_source(model, blobs).to_dict(),
        model_bytes=model.size_bytes, plan_id=rec.id,
    )
