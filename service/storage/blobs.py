"""Content-addressed blob store on a filesystem shared by the API and every worker.

A blob's name is its sha256, so the same upload twice costs one copy and a path can never be
overwritten with other bytes. Writes go to a temp file in the same directory and are renamed in,
so readers never see half a file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20


class UploadTooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(f"upload exceeds the limit of {limit} bytes")
        self.limit = limit


@dataclass(frozen=True)
class StagedUpload:
    """An upload written to a private temp file, hashed, not yet visible in the store."""

    path: Path
    sha256: str
    size: int


class BlobStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path_for(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def _staging_dir(self) -> Path:
        d = self.root / "staging"
        d.mkdir(parents=True, exist_ok=True)
        return d

    async def stage(self, chunks: AsyncIterator[bytes], *, limit: int, suffix: str = "") -> StagedUpload:
        """Stream an upload to a temp file while hashing it; the caller validates, then commits or discards."""
        digest = hashlib.sha256()
        fd, name = tempfile.mkstemp(dir=self._staging_dir(), suffix=suffix)
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise UploadTooLarge(limit)
                    digest.update(chunk)
                    out.write(chunk)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        return StagedUpload(Path(name), digest.hexdigest(), size)

    def commit(self, staged: StagedUpload) -> Path:
        """Move a validated upload into the store under its hash (a no-op if the bytes are there already)."""
        target = self.path_for(staged.sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            staged.path.unlink(missing_ok=True)
        else:
            os.replace(staged.path, target)
        return target

    @staticmethod
    def discard(staged: StagedUpload) -> None:
        staged.path.unlink(missing_ok=True)

    def sweep_staging(self, older_than_s: float) -> int:
        """Remove what killed uploads left behind: staging files and scratch folders, half-unpacked model
        folders, untouched for `older_than_s`. A live upload writes (or is inspected) well within that."""
        cutoff = time.time() - older_than_s
        leftovers = []
        staging = self.root / "staging"
        if staging.is_dir():
            leftovers += list(staging.iterdir())
        unpacked = self.root.parent / "unpacked"
        if unpacked.is_dir():
            leftovers += [p for p in unpacked.iterdir() if ".tmp" in p.name]
        removed = 0
        for path in leftovers:
            try:
                if path.lstat().st_mtime >= cutoff:
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed += 1
            except OSError:  # gone already (another process swept it) or in use: the next sweep retries
                continue
        return removed

    def unpacked(self, sha256: str, archive: Path | None = None) -> Path:
        """A zipped model directory unpacked beside the store (once per content), for loaders that need a folder."""
        from service.core.uploads import unpack_hf

        return unpack_hf(archive or self.path_for(sha256), self.root.parent / "unpacked" / sha256)

    def model_path(self, sha256: str, file_type: str) -> Path:
        """Where a job finds a stored model: the blob itself, or its unpacked folder for HF directories.
        `file_type` is the upload's kind (the model row's `format`: safetensors, pt2, hf), not a weight or
        export format."""
        return self.unpacked(sha256) if file_type == "hf" else self.path_for(sha256)
