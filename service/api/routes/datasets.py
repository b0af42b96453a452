"""/v1/datasets: calibration data as safetensors with `inputs` and optional `targets`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from service.storage import store
from service.api.deps import get_blobs, get_session, get_settings
from service.api.responses import dataset_out
from service.api.security import Caller, get_caller
from service.api.uploading import keep_if_valid, stage_upload
from service.api.schemas import DatasetOut
from service.storage.blobs import BlobStore
from service.core.compat import max_integer_input
from service.config import Settings
from service.storage.db.models import DatasetRecord
from service.errors import InvalidInput
from service.core.uploads import (
    check_dataset, check_finite_safetensors, check_npz, check_text, read_safetensors_header, sniff_format,
)

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.post("", status_code=201, response_model=DatasetOut)
async def upload_dataset(
    file: UploadFile = File(..., description="safetensors or .npz with 'inputs' [N, ...] and optional 'targets' [N, ...]; or text (JSONL / lines)"),
    name: str | None = Form(None, max_length=200),
    settings: Settings = Depends(get_settings),
    blobs: BlobStore = Depends(get_blobs),
    session: Session = Depends(get_session),
    caller: Caller = Depends(get_caller),
) -> DatasetOut:
    staged = await stage_upload(file, blobs, settings)
    with keep_if_valid(blobs, staged):
        kind = sniff_format(staged.path)
        if kind == "safetensors":
            tensors = read_safetensors_header(staged.path)
            samples, shape, dtype, has_targets = check_dataset(tensors)
            await run_in_threadpool(check_finite_safetensors, staged.path, tensors)
        elif kind == "zip":  # the same zip-bomb limits as model archives
            samples, shape, dtype, has_targets = await run_in_threadpool(
                check_npz, staged.path, max_total_bytes=settings.max_unpacked_bytes
            )
        elif kind == "text":
            # Tokenized by the model's own tokenizer in the job; "text" marks it for people and the API.
            samples, shape, dtype, has_targets = await run_in_threadpool(check_text, staged.path), (), "text", False
        else:
            raise InvalidInput("file", "expected safetensors or .npz with 'inputs' (and optional 'targets'), "
                                       "or text: JSONL with a \"text\" field per line, or plain lines")
        # Integer inputs are token ids: their largest is checked against a model's vocabulary at submit.
        max_token_id = await run_in_threadpool(max_integer_input, staged.path, kind)
    rec = DatasetRecord(
        name=name or file.filename or "dataset", sha256=staged.sha256, size_bytes=staged.size, samples=samples,
        input_shape=list(shape), input_dtype=dtype, has_targets=has_targets, max_token_id=max_token_id,
    )
    rec.owned_by = caller.owner
    await run_in_threadpool(store.save, session, rec)  # never the session on the event loop
    return dataset_out(rec)


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: str, session: Session = Depends(get_session), caller: Caller = Depends(get_caller)) -> DatasetOut:
    return dataset_out(store.get_dataset(session, dataset_id=dataset_id, owned_by=caller.sees))
