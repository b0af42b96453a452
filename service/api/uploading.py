"""Streaming an UploadFile into the blob store's staging area under the size limit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import UploadFile

from service.storage.blobs import CHUNK, BlobStore, StagedUpload, UploadTooLarge
from service.config import Settings
from service.errors import InvalidInput


async def stage_upload(file: UploadFile, blobs: BlobStore, settings: Settings) -> StagedUpload:
    async def chunks():
        while True:
            data = await file.read(CHUNK)
            if not data:
                return
            yield data

    try:
        staged = await blobs.stage(chunks(), limit=settings.max_upload_bytes)
    except UploadTooLarge as exc:
        raise InvalidInput("file", str(exc), status=413) from exc
    if staged.size == 0:
        blobs.discard(staged)
        raise InvalidInput("file", "the upload is empty")
    return staged


@contextmanager
def keep_if_valid(blobs: BlobStore, staged: StagedUpload) -> Iterator[None]:
    """Commit the staged upload to the blob store when the checks in the block pass; discard it when
    they raise (anything, cancellation included)."""
    try:
        yield
    except BaseException:
        blobs.discard(staged)
        raise
    blobs.commit(staged)
