"""/v1/models: upload a model (safetensors + built-in architecture, or a torch.export .pt2)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from service.storage import store
from service.api.deps import get_blobs, get_session, get_settings
from service.api.responses import model_out
from service.api.security import Caller, get_caller
from service.api.uploading import keep_if_valid, stage_upload
from service.api.schemas import ModelOut
from service.storage.blobs import BlobStore
from service.config import Settings
from service.storage.db.models import ModelRecord
from service.errors import InvalidInput
from service.core.inspection import inspect_upload
from service.api.security import auth_required
from service.jobs.sandbox import sandbox_mode_for
from service.core.uploads import (
    check_pt2, check_zip, code_formats_allowed, read_safetensors_header, sniff_format, unpack_hf, zip_kind,
)

router = APIRouter(prefix="/v1/models", tags=["models"])


def _parse_spec(spec: str | None) -> tuple[str | None, dict | None]:
    if spec is None or not spec.strip():
        return None, None
    try:
        data = json.loads(spec)
    except json.JSONDecodeError as exc:
        raise InvalidInput("spec", f"must be JSON like {{\"architecture\": \"mlp\", \"hyperparams\": {{...}}}} ({exc})")
    if not isinstance(data, dict) or not isinstance(data.get("architecture"), str):
        raise InvalidInput("spec", "must be a JSON object with a string 'architecture' and object 'hyperparams'")
    hyper = data.get("hyperparams", {})
    if not isinstance(hyper, dict):
        raise InvalidInput("spec.hyperparams", "must be a JSON object")
    extra = set(data) - {"architecture", "hyperparams"}
    if extra:
        raise InvalidInput("spec", f"unexpected keys {sorted(extra)}")
    return data["architecture"], hyper


@router.post("", status_code=201, response_model=ModelOut)
async def upload_model(
    file: UploadFile = File(..., description="safetensors weights, or a torch.export .pt2 archive"),
    spec: str | None = Form(None, description='For safetensors: {"architecture": "mlp", "hyperparams": {...}}'),
    name: str | None = Form(None, max_length=200),
    settings: Settings = Depends(get_settings),
    blobs: BlobStore = Depends(get_blobs),
    session: Session = Depends(get_session),
    caller: Caller = Depends(get_caller),
) -> ModelOut:
    architecture, hyperparams = _parse_spec(spec)
    staged = await stage_upload(file, blobs, settings)
    with keep_if_valid(blobs, staged):
        fmt = sniff_format(staged.path)
        if fmt == "safetensors":
            if architecture is None:
                raise InvalidInput("spec", "a safetensors upload needs an architecture spec")
            read_safetensors_header(staged.path)
        elif fmt == "zip":
            await run_in_threadpool(check_zip, staged.path, max_total_bytes=settings.max_unpacked_bytes)
            fmt = zip_kind(staged.path)
            if architecture is not None:
                raise InvalidInput("spec", f"a {'.pt2 archive' if fmt == 'pt2' else 'Hugging Face directory'} "
                                           "carries its own architecture; leave spec out")
            if fmt == "pt2":
                allowed = code_formats_allowed(settings.allow_code_formats, auth_on=auth_required(settings))
                sandboxed = await run_in_threadpool(sandbox_mode_for, settings.sandbox)
                await run_in_threadpool(check_pt2, staged.path, allowed=allowed, sandboxed=sandboxed)
        else:
            raise InvalidInput("file", "unrecognised file type: expected safetensors, a torch.export .pt2, or a "
                                       "zipped Hugging Face model directory (config.json + *.safetensors)")
        with tempfile.TemporaryDirectory(dir=staged.path.parent) as scratch:
            path = staged.path
            if fmt == "hf":  # the loader needs a folder; jobs unpack the stored archive again on demand
                path = await run_in_threadpool(unpack_hf, staged.path, Path(scratch) / "model")
            inspected = await run_in_threadpool(
                inspect_upload, settings, path=path, fmt=fmt, architecture=architecture, hyperparams=hyperparams
            )
    rec = ModelRecord(
        name=name or file.filename or "model", sha256=staged.sha256, format=fmt, architecture=architecture,
        hyperparams=hyperparams, size_bytes=staged.size, layers=inspected.layers, inputs=inspected.inputs,
    )
    rec.owned_by = caller.owner
    await run_in_threadpool(store.save, session, rec)  # never the session on the event loop
    return model_out(rec)


@router.get("/{model_id}", response_model=ModelOut)
def get_model(model_id: str, session: Session = Depends(get_session), caller: Caller = Depends(get_caller)) -> ModelOut:
    return model_out(store.get_model(session, model_id=model_id, owned_by=caller.sees))
