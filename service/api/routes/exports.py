"""/v1/plans/{id}/export and /v1/analyses/{id}/proxy-quality: measured-truth reads of stored results.

Proxy quality has two levels: per layer (each metric's table vs a measured loss_delta analysis of the
same model and data) and per plan (`frontier_evaluations`: predicted damage vs measured loss across
the measured points of each frontier evaluation, stored when the evaluation finished)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Response
from sqlalchemy.orm import Session

from service.core import evaluations, exports
from service.storage import store
from service.api.deps import get_blobs, get_session, get_settings
from service.api.security import Caller, get_caller
from service.storage.blobs import BlobStore
from service.config import Settings
from service.errors import InvalidInput

router = APIRouter(tags=["exports"])


@router.get("/v1/plans/{plan_id}/export")
def export_plan(
    plan_id: str,
    format: str = Query("json", description="json, llamacpp, llamacpp-types, gptqmodel, llmcompressor, nncf, hawq or safetensors"),
    session: Session = Depends(get_session),
    settings: Settings = Depends(get_settings),
    blobs: BlobStore = Depends(get_blobs),
    caller: Caller = Depends(get_caller),
) -> Response:
    exported = exports.export_stored_plan(session, settings, blobs, plan_id=plan_id, fmt=format, owned_by=caller.sees)
    headers = {"Content-Disposition": f'attachment; filename="{exported.filename}"'}
    if exported.warnings:
        headers["X-Bitplan-Export-Warnings"] = " | ".join(exported.warnings).encode("ascii", "replace").decode()
    return Response(exported.content, media_type=exported.media_type, headers=headers)


@router.get("/v1/analyses/{analysis_id}/proxy-quality")
def proxy_quality(
    analysis_id: str, session: Session = Depends(get_session), caller: Caller = Depends(get_caller)
) -> dict[str, Any]:
    analysis = store.get_analysis(session, analysis_id=analysis_id, owned_by=caller.sees)
    siblings = store.sibling_analyses(session, analysis=analysis, owned_by=caller.sees)
    # Plan level: predicted damage vs measured loss across the points of each frontier evaluation.
    measured = store.list_evaluations(session, analysis_id=analysis.id, target="frontier", owned_by=caller.sees)
    frontier = evaluations.frontier_agreements(measured)
    try:
        per_layer = exports.proxy_quality_for(analysis, siblings)
    except InvalidInput as exc:
        # No measured loss_delta table yet: "nothing measured to rank against" is an answer, not an
        # error (a page asking for it on every load must not log a failed request); the plan-level
        # agreement may still be there.
        per_layer = {"metrics": {}, "measured_metric": None, "metrics_unavailable": exc.message}
    return {"analysis_id": analysis.id, **per_layer, "frontier_evaluations": frontier}
