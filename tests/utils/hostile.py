"""Hostile uploads built by the tests: archives whose loading would run a payload, bombs, poisoned tensors.

Every payload only writes a marker file, so a test can tell whether it ran.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path


class _Payload:
    """Unpickling this runs `code` (what a pickle-based loader does with any object)."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


def marker_code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('payload ran')"


def tiny_pt2(path: Path) -> Path:
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    torch.export.save(torch.export.export(model, (torch.randn(2, 8),)), str(path))
    return path


def _rewrite(path: Path, change) -> None:
    """Rewrite members of a zip in place: change(name, data) returns the new bytes."""
    with zipfile.ZipFile(path) as zf:
        members = [(info, zf.read(info)) for info in zf.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for info, data in members:
            zf.writestr(info, change(info.filename, data))


def pickled_weight_pt2(path: Path, marker: Path) -> Path:
    """A real torch.export archive whose first weight is stored `use_pickle: true` with a payload:
    torch.export.load runs it (torch.load(weights_only=False) on the weight's record)."""
    import torch

    tiny_pt2(path)
    buf = io.BytesIO()
    torch.save(_Payload(marker_code(marker)), buf)

    def change(name: str, data: bytes) -> bytes:
        if name.endswith("data/weights/model_weights_config.json"):
            config = json.loads(data)
            first = sorted(config["config"])[0]
            config["config"][first]["use_pickle"] = True
            config["config"][first]["path_name"] = "weight_pickled"
            return json.dumps(config).encode()
        return data

    _rewrite(path, change)
    with zipfile.ZipFile(path, "a", zipfile.ZIP_STORED) as zf:
        top = zf.namelist()[0].split("/", 1)[0]
        zf.writestr(f"{top}/data/weights/weight_pickled", buf.getvalue())
    return path


def guards_code_pt2(path: Path, marker: Path) -> Path:
    """A torch.export archive with no pickle at all whose `guards_code` is a payload:
    ExportedProgram.module() exec()s it."""
    tiny_pt2(path)

    def change(name: str, data: bytes) -> bytes:
        if name.endswith("models/model.json"):
            program = json.loads(data)
            # Single quotes only: torch pastes the guard into a double-quoted message too.
            program["guards_code"] = [f"__import__('pathlib').Path({str(marker)!r}).write_text('payload ran') > 0"]
            return json.dumps(program).encode()
        return data

    _rewrite(path, change)
    return path


def npz_bomb(path: Path, unpacked_bytes: int = 1024**3) -> Path:
    """An .npz whose `inputs` member is `unpacked_bytes` of zeros (deflate packs it ~1000×)."""
    import numpy as np

    header = io.BytesIO()
    rows = unpacked_bytes // (4 * 256)
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (rows, 256)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("inputs.npy", "w", force_zip64=True) as member:
            member.write(header.getvalue())
            chunk = bytes(1 << 20)
            left = rows * 256 * 4
            while left > 0:
                member.write(chunk[: min(left, len(chunk))])
                left -= len(chunk)
    return path
