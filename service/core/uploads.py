"""Checks on uploaded files that run no code: file type sniffing and safetensors header parsing.

Everything here reads bytes and JSON only. Anything that needs torch (building the architecture,
loading a .pt2) happens later, in a child process.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

from service.errors import InvalidInput

# Element sizes of the dtypes the safetensors format defines.
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
INT_DTYPES = {"U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64"}
MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]


def sniff_format(path: Path) -> str:
    """'zip' for a zip archive (.pt2, .npz, a zipped HF directory), 'safetensors' for a plausible
    safetensors file, 'text' for UTF-8 text, else 'unknown'."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4096)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < min(size, MAX_HEADER + 1):
        return "safetensors"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        text = head[: exc.start].decode("utf-8") if exc.start > len(head) - 4 else None
    if text is not None and text.strip() and "\x00" not in text:
        return "text"
    return "unknown"


def read_safetensors_header(path: Path, *, field: str = "file") -> dict[str, TensorInfo]:
    """Parse and check a safetensors header against the file's size. Raises InvalidInput(field)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw_len = f.read(8)
        if len(raw_len) < 8:
            raise InvalidInput(field, "not a safetensors file: shorter than its 8-byte header length")
        (n,) = struct.unpack("<Q", raw_len)
        if n == 0 or n > MAX_HEADER or 8 + n > size:
            raise InvalidInput(field, "not a valid safetensors file: header length exceeds the file (truncated?)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInput(field, f"not a valid safetensors file: header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise InvalidInput(field, "not a valid safetensors file: header is not a JSON object")
    data_len = size - 8 - n
    tensors: dict[str, TensorInfo] = {}
    spans = []
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = meta["dtype"]
            shape = tuple(int(d) for d in meta["shape"])
            start, end = (int(x) for x in meta["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(field, f"tensor {name!r}: malformed header entry") from exc
        if dtype not in DTYPE_BYTES:
            raise InvalidInput(field, f"tensor {name!r}: unknown dtype {dtype!r}")
        if any(d < 0 for d in shape):
            raise InvalidInput(field, f"tensor {name!r}: negative dimension")
        expected = math.prod(shape) * DTYPE_BYTES[dtype]
        if not (0 <= start <= end <= data_len) or end - start != expected:
            raise InvalidInput(
                field, f"tensor {name!r}: data offsets do not fit the file (truncated or corrupt upload)"
            )
        spans.append((start, end))
        tensors[name] = TensorInfo(dtype, shape)
    if not tensors:
        raise InvalidInput(field, "safetensors file holds no tensors")
    spans.sort()
    for (_, a_end), (b_start, _) in zip(spans, spans[1:]):
        if b_start < a_end:
            raise InvalidInput(field, "safetensors tensors overlap (corrupt file)")
    return tensors


def check_zip(path: Path, *, field: str = "file", max_members: int = 10_000, max_ratio: float = 200.0,
              max_total_bytes: int = 8 * 1024**3) -> None:
    """A .pt2 is a zip: check it opens, every member's CRC, and refuse zip bombs before a child unpacks it.

    The ratio alone is not enough: a large upload at 200× still unpacks to terabytes, so the declared
    total is capped too, before testzip() decompresses anything (it never reads past a member's
    declared size). Duplicate names are refused because readers disagree on which copy wins.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > max_members:
                raise InvalidInput(field, f"archive has {len(infos)} members (limit {max_members})")
            total = sum(i.file_size for i in infos)
            if total > max_total_bytes:
                raise InvalidInput(field, f"archive unpacks to {total} bytes (limit {max_total_bytes})")
            names = [i.filename for i in infos]
            if len(set(names)) != len(names):
                raise InvalidInput(field, "archive holds two members with the same name")
            packed = max(1, sum(i.compress_size for i in infos))
            if total / packed > max_ratio:
                raise InvalidInput(field, "archive expands more than 200× (zip bomb?)")
            for info in infos:
                if info.filename.startswith("/") or ".." in Path(info.filename).parts:
                    raise InvalidInput(field, f"archive member {info.filename!r} escapes the archive")
            bad = zf.testzip()
            if bad is not None:
                raise InvalidInput(field, f"archive member {bad!r} is corrupt")
    except zipfile.BadZipFile as exc:
        raise InvalidInput(field, f"not a valid zip archive: {exc}") from exc


def _hf_root(names: list[str]) -> str | None:
    """The folder inside an archive that holds config.json ('' for the top), if it is a HF directory."""
    for name in names:
        parts = Path(name).parts
        if parts and parts[-1] == "config.json" and len(parts) <= 2:
            return "" if len(parts) == 1 else parts[0]
    return None


def zip_kind(path: Path) -> str:
    """'hf' for a zipped Hugging Face model directory (config.json + *.safetensors), else 'pt2'."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    root = _hf_root(names)
    if root is None:
        return "pt2"
    prefix = f"{root}/" if root else ""
    if not any(n.startswith(prefix) and n.endswith(".safetensors") for n in names):
        raise InvalidInput("file", "a Hugging Face model archive needs *.safetensors weights beside config.json "
                                   "(pickled .bin weights are refused)")
    return "hf"


def unpack_hf(archive: Path, dest: Path) -> Path:
    """Unpack a checked HF archive once into `dest` (atomically) and return the folder with config.json.

    Symlinks and special files are skipped, so nothing inside can point outside `dest`.
    """
    if not dest.exists():
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                mode = (info.external_attr >> 16) & 0o170000
                if info.is_dir() or mode not in (0, stat.S_IFREG):
                    continue
                target = tmp.joinpath(*Path(info.filename).parts)
                if tmp.resolve() not in target.resolve().parents:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
        try:
            os.replace(tmp, dest)
        except OSError:  # another process unpacked the same archive first
            shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(archive) as zf:
        root = _hf_root(zf.namelist())
    return dest / root if root else dest


def check_dataset(tensors: dict[str, TensorInfo], *, field: str = "file") -> tuple[int, tuple[int, ...], str, bool]:
    """Calibration data: float `inputs` [N, ...] and optional integer or float `targets` [N, ...]."""
    if "inputs" not in tensors:
        raise InvalidInput(field, f"dataset needs a tensor named 'inputs'; found {sorted(tensors)}")
    extra = set(tensors) - {"inputs", "targets"}
    if extra:
        raise InvalidInput(field, f"unexpected tensors {sorted(extra)}; allowed: inputs, targets")
    inputs = tensors["inputs"]
    if len(inputs.shape) < 2 or inputs.shape[0] == 0:
        raise InvalidInput(field, "inputs: must have shape [samples, ...] with at least one sample")
    if inputs.dtype not in FLOAT_DTYPES | INT_DTYPES:
        raise InvalidInput(field, f"inputs: unsupported dtype {inputs.dtype}")
    targets = tensors.get("targets")
    if targets is not None:
        if not targets.shape or targets.shape[0] != inputs.shape[0]:
            raise InvalidInput(field, "targets: first dimension must equal the number of inputs")
        if targets.dtype not in INT_DTYPES | FLOAT_DTYPES:
            raise InvalidInput(field, f"targets: unsupported dtype {targets.dtype}")
    return inputs.shape[0], inputs.shape[1:], inputs.dtype, targets is not None


def check_npz(path: Path, *, field: str = "file", max_total_bytes: int = 8 * 1024**3) -> tuple[int, tuple[int, ...], str, bool]:
    """An .npz with `inputs` and optional `targets`, checked like a model archive (zip bombs, CRCs), then
    each member's .npy header read without unpacking the data; object arrays (pickle) are refused.
    Float members are scanned for NaN / Inf, streamed, so a large member never sits in memory."""
    import numpy as np

    check_zip(path, field=field, max_total_bytes=max_total_bytes)
    tensors = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                if not info.filename.endswith(".npy"):
                    raise InvalidInput(field, f"member {info.filename!r} is not a .npy array (an .npz holds only those)")
                name = info.filename[: -len(".npy")]
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
                    if version not in readers:
                        raise ValueError(f"unsupported .npy format version {version}")
                    shape, _, dtype = readers[version](f)
                    if dtype.hasobject or dtype.kind not in "fiub":
                        raise InvalidInput(field, f"array {name!r}: unsupported dtype {dtype} (numbers only)")
                    declared = math.prod(shape) * dtype.itemsize
                    if info.file_size - f.tell() != declared:
                        raise InvalidInput(field, f"array {name!r}: its data does not match its shape (truncated?)")
                    if dtype.kind == "f":
                        _check_finite_stream(f, dtype, declared, name, field)
                kind = {"f": "F32", "i": "I64", "u": "U64", "b": "BOOL"}[dtype.kind]
                tensors[name] = TensorInfo(kind, tuple(int(d) for d in shape))
    except InvalidInput:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InvalidInput(field, f"not a readable .npz of plain arrays: {exc}") from exc
    return check_dataset(tensors, field=field)


def _check_finite_stream(f, dtype, nbytes: int, name: str, field: str) -> None:
    import numpy as np

    step = (CHUNK_BYTES // dtype.itemsize) * dtype.itemsize
    left = nbytes
    while left > 0:
        chunk = f.read(min(step, left))
        if not chunk:
            raise InvalidInput(field, f"tensor {name!r}: data ends early (truncated?)")
        left -= len(chunk)
        if not np.isfinite(np.frombuffer(chunk, dtype=dtype)).all():
            raise InvalidInput(field, f"tensor {name!r} holds NaN or infinite values")


# Float dtypes of safetensors as (unsigned view, exponent mask): a value is NaN or ±Inf exactly when all its
# exponent bits are set (F8_E4M3 has no Inf, and NaN only as S.1111.111).
_FLOAT_BITS = {"F16": ("<u2", 0x7C00), "BF16": ("<u2", 0x7F80), "F32": ("<u4", 0x7F800000),
               "F64": ("<u8", 0x7FF0000000000000), "F8_E5M2": ("u1", 0x7C), "F8_E4M3": ("u1", 0x7F)}
CHUNK_BYTES = 8 << 20


def check_finite_safetensors(path: Path, tensors: dict[str, TensorInfo], *, field: str = "file") -> None:
    """Every float tensor of a (header-checked) safetensors file is finite; InvalidInput naming the first that
    is not. Streams the file in chunks: no tensor is ever whole in memory."""
    import numpy as np

    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        base = 8 + n
        for name, info in tensors.items():
            if info.dtype not in _FLOAT_BITS:
                continue
            view, mask = _FLOAT_BITS[info.dtype]
            start, end = (int(x) for x in header[name]["data_offsets"])
            f.seek(base + start)
            dtype = np.dtype(view)
            step = (CHUNK_BYTES // dtype.itemsize) * dtype.itemsize
            left = end - start
            while left > 0:
                chunk = f.read(min(step, left))
                left -= len(chunk)
                bits = np.frombuffer(chunk, dtype=dtype)
                if bool(((bits & dtype.type(mask)) == mask).any()):
                    raise InvalidInput(field, f"tensor {name!r} holds NaN or infinite values")


def check_text(path: Path, *, field: str = "file", max_line_bytes: int = 10 * 1024 * 1024) -> int:
    """Text calibration: JSONL with a string "text" per line, or plain lines. Returns the document count."""
    docs = 0
    jsonl = None
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if len(raw) > max_line_bytes:
                raise InvalidInput(field, f"line {number} is longer than {max_line_bytes} bytes")
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                raise InvalidInput(field, f"line {number} is not UTF-8 text") from exc
            if not line:
                continue
            if jsonl is None:
                jsonl = line.startswith("{")
            if jsonl:
                try:
                    doc = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InvalidInput(field, f"line {number}: not JSON ({exc.msg})") from exc
                if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
                    raise InvalidInput(field, f'line {number}: a JSONL document needs a string "text" field')
            docs += 1
    if docs == 0:
        raise InvalidInput(field, "the text file holds no documents")
    return docs


def check_pt2(path: Path, *, allowed: bool, sandboxed: bool, field: str = "file") -> None:
    """A .pt2 is accepted only where code formats are on, only with the sandbox, and only when it loads
    without pickle (workers.pt2.archive_problems: zip and JSON only, no torch in this process)."""
    from workers.errors import ModelLoadError
    from workers.pt2 import archive_problems, refusal

    if not allowed:
        raise InvalidInput(field, ".pt2 archives are code to torch when loaded; this server has them switched off "
                                  "(BITPLAN_ALLOW_CODE_FORMATS; off by default while auth is on): upload safetensors "
                                  "with a built-in architecture, or a zipped Hugging Face directory")
    if not sandboxed:
        raise InvalidInput(field, ".pt2 archives are loaded only in the job sandbox, which is not available on this "
                                  "server (BITPLAN_SANDBOX=off or bubblewrap missing)")
    try:
        problems = archive_problems(path)
    except ModelLoadError as exc:
        raise InvalidInput(field, str(exc).removeprefix("model: ")) from exc
    if problems:
        raise InvalidInput(field, refusal(problems))


def code_formats_allowed(allow_code_formats: bool | None, *, auth_on: bool) -> bool:
    """Unset means: on for a single trusted user (auth off), off as soon as tokens are required."""
    return (not auth_on) if allow_code_formats is None else allow_code_formats
