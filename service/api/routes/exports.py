"""/v1/plans/{id}/export and /v1/analyses/{id}/proxy-quality: measured-truth reads of stored results."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from service import exports, store
from service.api.deps import get_session
from service.db.models import AnalysisRecord

router = APIRouter(tags=["exports"])


@router.get("/v1/plans/{plan_id}/export")
def export_plan(
    plan_id: str,
    request: Request,
    format: str = Query("json", description="json, gptqmodel, llmcompressor, nncf, hawq or safetensors"),
    session: Session = Depends(get_session),
) -> Response:
    rec = store.get_plan(session, plan_id=plan_id)
    analysis = store.get_analysis(session, analysis_id=rec.analysis_id)
    model = store.get_model(session, model_id=analysis.model_id)
    settings = request.app.state.settings
    source = {
        "format": model.format,
        "path": str(request.app.state.blobs.path_for(model.sha256)),
        "architecture": model.architecture,
        "hyperparams": model.hyperparams,
    }
    exported = exports.export_plan(
        settings, fmt=format, table=analysis.table, assignment=dict(rec.assignment), model=source
    )
    headers = {"Content-Disposition": f'attachment; filename="{exported.filename}"'}
    if exported.warnings:
        headers["X-Bitplan-Export-Warnings"] = " | ".join(exported.warnings).encode("ascii", "replace").decode()
    return Response(exported.content, media_type=exported.media_type, headers=headers)


@router.get("/v1/analyses/{analysis_id}/proxy-quality")
def proxy_quality(analysis_id: str, session: Session = Depends(get_session)) -> dict[str, Any]:
    analysis = store.get_analysis(session, analysis_id=analysis_id)
    siblings = session.scalars(
        select(AnalysisRecord).where(
            AnalysisRecord.model_id == analysis.model_id,
            AnalysisRecord.dataset_id == analysis.dataset_id,
            AnalysisRecord.id != analysis.id,
            AnalysisRecord.status == "succeeded",
        )
    ).all()
    return {"analysis_id": analysis.id, **exports.proxy_quality_for(analysis, siblings)}
