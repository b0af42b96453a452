"""Whether a dataset can feed a model, decided at submit time from what the two uploads recorded.

Why here: a dataset that cannot feed the model would otherwise wait in the queue and fail minutes
later inside the job. The API process never imports torch, so the model's input signature is
recorded when the upload is inspected (in the sandboxed child: workers.models.input_signature) and
the dataset's shape, dtype and largest integer input when it is uploaded (`max_integer_input`, numpy
only). Rows from before these were recorded (signature None) are not checked.

What is refused, each with both shapes in the message: a per-sample shape or rank the model does not
take (dimensions the export left dynamic match anything), float data for a token model and integer
data for a float model, text for a model without a tokenizer, token ids ≥ the vocabulary size,
sequences longer than the model's positions (unless `options.max_length` cuts them), and fewer
samples than a static-batch model's one batch.
"""

from __future__ import annotations

import json
import math
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from service.errors import InvalidInput

__all__ = ["check_dataset_fits", "check_latency_table_fits", "max_integer_input"]

_FLOAT = {"F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2"}
_SAFETENSORS_INT = {"U8": "<u1", "I8": "<i1", "I16": "<i2", "U16": "<u2", "I32": "<i4", "U32": "<u4",
                    "I64": "<i8", "U64": "<u8", "BOOL": "<u1"}
_CHUNK = 8 << 20


def _shape(dims: list[Any]) -> str:
    return "[" + ", ".join("*" if d is None else str(d) for d in dims) + "]"


def check_dataset_fits(inputs: Mapping[str, Any] | None, dataset: Any, options: Mapping[str, Any]) -> None:
    """InvalidInput("dataset_id", ...) when `dataset` (a DatasetRecord) cannot feed a model whose recorded
    input signature is `inputs`; nothing when it can or when the signature is unknown."""
    if not inputs or dataset is None:
        return
    dtype = dataset.input_dtype
    shape = list(dataset.input_shape or [])
    max_length = options.get("max_length")
    max_length = max_length if isinstance(max_length, int) and not isinstance(max_length, bool) and max_length > 0 else None
    have = f"the dataset's inputs are {_shape([dataset.samples, *shape])} {dtype}"
    if inputs.get("takes") == "token_ids":
        if dtype == "text":
            return  # tokenized by the model's own tokenizer, cut into windows that fit, in the job
        want = "the model takes integer token ids [samples, sequence]"
        if dtype in _FLOAT:
            raise InvalidInput("dataset_id", f"{want}; {have}")
        if len(shape) != 1:
            raise InvalidInput("dataset_id", f"{want}; {have}")
        vocab = inputs.get("vocab_size")
        top = getattr(dataset, "max_token_id", None)
        if isinstance(vocab, int) and isinstance(top, int) and top >= vocab:
            raise InvalidInput("dataset_id", f"{want} below its vocabulary size {vocab}; {have} and hold token id {top}")
        positions = inputs.get("max_positions")
        length = min(shape[0], max_length) if max_length else shape[0]
        if isinstance(positions, int) and length > positions:
            raise InvalidInput(
                "dataset_id",
                f"the model takes at most {positions} positions [samples, ≤ {positions}]; {have}: set"
                f" options.max_length ≤ {positions} to cut them, or upload shorter sequences",
            )
        return
    if inputs.get("takes") != "tensor" or not isinstance(inputs.get("shape"), list):
        return
    model_shape = list(inputs["shape"])
    model_dtype = str(inputs.get("dtype") or "float32")
    want = f"the model takes {_shape(model_shape)} {model_dtype}"
    if dtype == "text":
        raise InvalidInput("dataset_id", f"{want}; the dataset is text, which only a Hugging Face model with its"
                                         " own tokenizer can read")
    model_float = model_dtype.startswith(("float", "bfloat", "half"))
    if model_float != (dtype in _FLOAT):
        raise InvalidInput("dataset_id", f"{want}; {have}")
    if max_length and len(shape) >= 2 and shape[0] > max_length:
        shape[0] = max_length  # the job keeps the first max_length positions (workers.data)
    per_sample = model_shape[1:]
    if len(per_sample) != len(shape) or any(m is not None and m != d for m, d in zip(per_sample, shape)):
        cut = f" (after options.max_length: {_shape(shape)} per sample)" if max_length else ""
        raise InvalidInput("dataset_id", f"{want}, i.e. {_shape(per_sample)} per sample; {have}{cut}")
    static = inputs.get("static_batch")
    samples = dataset.samples
    max_samples = options.get("max_samples")
    if isinstance(max_samples, int) and not isinstance(max_samples, bool) and max_samples > 0:
        samples = min(samples, max_samples)
    if isinstance(static, int) and samples < static:
        raise InvalidInput(
            "dataset_id",
            f"{want}: it was exported with a fixed batch of {static}, and {samples} samples are fewer than one"
            " batch; give more samples, or re-export with a dynamic batch: torch.export.export(m, (x,),"
            " dynamic_shapes={'x': {0: torch.export.Dim('batch')}})",
        )


def max_integer_input(path: Path, kind: str) -> int | None:
    """The largest value of an integer `inputs` tensor (token ids), streamed in chunks; None for float or
    text data. `kind` is the upload's sniffed format ("safetensors" or "zip" for .npz)."""
    import numpy as np

    if kind == "safetensors":
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            meta = json.loads(f.read(n)).get("inputs") or {}
            dtype = _SAFETENSORS_INT.get(meta.get("dtype"))
            if dtype is None:
                return None
            start, end = (int(x) for x in meta["data_offsets"])
            f.seek(8 + n + start)
            return _stream_max(f, np.dtype(dtype), end - start)
    if kind == "zip":
        with zipfile.ZipFile(path) as zf:
            if "inputs.npy" not in zf.namelist():
                return None
            with zf.open("inputs.npy") as f:
                version = np.lib.format.read_magic(f)
                readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
                if version not in readers:
                    return None
                shape, _, dtype = readers[version](f)
                if dtype.kind not in "iub":
                    return None
                return _stream_max(f, dtype, math.prod(shape) * dtype.itemsize)
    return None


def _stream_max(f, dtype, nbytes: int) -> int | None:
    import numpy as np

    step = (_CHUNK // dtype.itemsize) * dtype.itemsize
    best = None
    left = nbytes
    while left > 0:
        chunk = f.read(min(step, left))
        if not chunk:
            break
        left -= len(chunk)
        values = np.frombuffer(chunk[: len(chunk) // dtype.itemsize * dtype.itemsize], dtype=dtype)
        if values.size:
            top = int(values.max())
            best = top if best is None else max(best, top)
    return best


def check_latency_table_fits(layers: list[Mapping[str, Any]] | None, candidates: list[str],
                             options: Mapping[str, Any]) -> None:
    """InvalidInput("options.latency_table", ...) when the table names a layer the model lacks or misses a
    layer × candidate the analysis needs: refused at submit, not minutes later in the job."""
    from workers.costs import parse_latency_table  # pure Python: the API process stays torch-free

    table = options.get("latency_table")
    if table is None or not layers:
        return
    try:
        parse_latency_table(table, [str(layer["name"]) for layer in layers], candidates)
    except ValueError as exc:
        raise InvalidInput("options.latency_table", str(exc).removeprefix("options.latency_table: ")) from exc
