"""Killed uploads leave nothing behind for long (issue 12, finding 9): their staging files are swept when
the server starts and on every reaper tick afterwards, once older than the grace period."""

from __future__ import annotations

import os
import time

from service.storage.blobs import BlobStore
from tests.utils.queue_factories import wait_until
from tests.utils.service_factories import make_client


def leftover(path, *, age_s: float, folder: bool = False):
    """What a killed upload leaves: a staging file (or an HF scratch folder) not touched for `age_s`."""
    if folder:
        (path / "model").mkdir(parents=True)
        (path / "model" / "config.json").write_text("{}")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half an upload")
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_staging_leftovers_are_swept_at_start_and_periodically(tmp_path):
    staging = tmp_path / "data" / "blobs" / "staging"
    old_file = leftover(staging / "tmpkilled1", age_s=7200)
    old_folder = leftover(staging / "tmpscratch", age_s=7200, folder=True)
    half_unpacked = leftover(tmp_path / "data" / "unpacked" / "ab12.tmp999", age_s=7200, folder=True)
    fresh = leftover(staging / "tmpuploading", age_s=5)
    with make_client(tmp_path, staging_grace_s=3600, job_reaper_s=0.1) as client:
        assert not old_file.exists() and not old_folder.exists() and not half_unpacked.exists()
        assert fresh.exists()  # an upload in progress is never touched
        later = leftover(staging / "tmpkilled2", age_s=7200)
        wait_until(lambda: not later.exists(), 10, "the periodic sweep")
        assert fresh.exists()
        assert client.get("/healthz").status_code == 200


def test_sweep_keeps_stored_blobs(tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    stored = leftover(blobs.path_for("ab" * 32), age_s=10**6)
    unpacked = leftover(tmp_path / "unpacked" / ("ab" * 32), age_s=10**6, folder=True)
    assert blobs.sweep_staging(60) == 0
    assert stored.exists() and unpacked.exists()
