"""Calibration data in: tensors (safetensors or npz: `inputs`, optional `targets`) or text.

Targets are integer class indices, one per input row (or per position for sequence outputs);
with no targets the metrics use a label-free loss. Other tensors in a file are ignored. Models that
take token ids (Hugging Face directories) get integer `inputs`; every other model float inputs.

Text (JSONL with a "text" field per line, or plain lines; needs the model's own tokenizer): the
documents are tokenized, joined with the tokenizer's EOS token between them, and cut into windows
of `max_length` tokens (the usual LM calibration set: no padding, so no attention masks); at most
`max_samples` windows are kept, and reading stops once enough tokens are in. A corpus shorter than
one window gives one shorter sample. For causal LMs the targets are the inputs shifted by one
(next-token cross-entropy; the model's forward drops its last position to match, see workers.hf);
for other text models there are no targets, i.e. label-free KL against the float model.

`Calibration.provenance` says what was read and what the caps cut, for the table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from workers.errors import DatasetError

__all__ = ["TEXT_DEFAULTS", "Calibration", "load_calibration"]

# Text windows when the request sets no caps: enough for stable traces, small enough for a CPU.
TEXT_DEFAULTS = {"max_samples": 64, "max_length": 128}


@dataclass
class Calibration:
    """Calibration samples held in memory and served in fixed-size mini-batches (last one shorter).

    `batch_size` may be lowered while an analysis runs (out-of-memory back-off)."""

    inputs: torch.Tensor
    targets: torch.Tensor | None = None
    batch_size: int = 256
    token_ids: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.inputs.dim() < 1 or self.inputs.shape[0] == 0:
            raise DatasetError("inputs: must hold at least one sample (first dimension = samples)")
        if self.token_ids:
            if self.inputs.dtype.is_floating_point or self.inputs.dtype.is_complex or self.inputs.dtype == torch.bool:
                raise DatasetError(f"inputs: this model takes integer token ids, got {self.inputs.dtype}")
            if (self.inputs < 0).any():
                raise DatasetError("inputs: token ids must be ≥ 0")
            self.inputs = self.inputs.to(torch.long)
        else:
            if not self.inputs.dtype.is_floating_point:
                raise DatasetError(f"inputs: must be a floating-point tensor, got {self.inputs.dtype}")
            if not torch.isfinite(self.inputs).all():
                raise DatasetError("inputs: contains NaN or infinite values")
            self.inputs = self.inputs.to(torch.float32)
        if self.targets is not None:
            self.targets = check_targets(self.targets, self.samples)
        check_batch_size(self.batch_size)

    @property
    def samples(self) -> int:
        return int(self.inputs.shape[0])

    def to(self, device: torch.device | str) -> Calibration:
        """Move the tensors (in place; returns self)."""
        self.inputs = self.inputs.to(device)
        if self.targets is not None:
            self.targets = self.targets.to(device)
        return self

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        yield from batches(self.inputs, self.targets, self.batch_size)

    def __len__(self) -> int:
        return -(-self.samples // self.batch_size)


def check_targets(t: torch.Tensor, samples: int, *, ignore_index: int | None = None) -> torch.Tensor:
    """Integer class indices, one row per input sample, ≥ 0 (or equal to `ignore_index` where one is
    given); as int64."""
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise DatasetError(f"targets: must be integer class indices, got {t.dtype}")
    if t.dim() < 1 or t.shape[0] != samples:
        raise DatasetError(f"targets: first dimension {list(t.shape)[:1]} must equal the number of inputs {samples}")
    if ignore_index is None:
        if (t < 0).any():
            raise DatasetError("targets: class indices must be ≥ 0")
    elif ((t < 0) & (t != ignore_index)).any():
        raise DatasetError(f"targets: class indices must be ≥ 0 (or {ignore_index} to ignore a position)")
    return t.to(torch.long)


def check_batch_size(batch_size: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"options.batch_size: must be a positive integer, got {batch_size!r}")


def batches(
    inputs: torch.Tensor, targets: torch.Tensor | None, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """(inputs, targets) in mini-batches of `batch_size` samples, the last one shorter."""
    for start in range(0, int(inputs.shape[0]), batch_size):
        stop = start + batch_size
        yield inputs[start:stop], None if targets is None else targets[start:stop]


def positive_option(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"options.{name}: must be a positive integer, got {value!r}")
    return value


def sniff(path: str) -> str:
    """'npz', 'safetensors' or 'text', from the first bytes (the extension is only a tie-break)."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "npz"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "safetensors"
    if path.endswith(".safetensors"):
        return "safetensors"
    return "text"


def load_calibration(
    path: str,
    *,
    batch_size: int = 256,
    max_samples: int | None = None,
    max_length: int | None = None,
    token_ids: bool = False,
    tokenizer: Any = None,
    causal_lm: bool = False,
) -> Calibration:
    """Read calibration data; `max_samples` keeps the first samples (the order is the file's) and
    `max_length` the first positions of each sequence (or the text window length)."""
    max_samples = positive_option("max_samples", max_samples)
    max_length = positive_option("max_length", max_length)
    if not os.path.isfile(path):
        raise DatasetError(f"dataset: no such file {path!r}")
    kind = sniff(path)
    if kind == "text":
        return _load_text(path, batch_size, max_samples, max_length, tokenizer, causal_lm)
    inputs, targets = _load_npz(path) if kind == "npz" else read_safetensors(path)
    total = int(inputs.shape[0]) if inputs.dim() else 0
    if max_samples is not None:
        inputs = inputs[:max_samples]
        targets = None if targets is None else targets[:max_samples]
    cut_length = False
    if max_length is not None and inputs.dim() >= 2 and inputs.shape[1] > max_length:
        cut_length = True
        inputs = inputs[:, :max_length]
        if targets is not None and targets.dim() >= 2 and targets.shape[1] > max_length:
            targets = targets[:, :max_length]
    provenance = {
        "format": kind,
        "samples": int(inputs.shape[0]) if inputs.dim() else 0,
        "samples_in_file": total,
        "max_samples": max_samples,
        "max_length": max_length,
        "sample_shape": [int(s) for s in inputs.shape[1:]],
        "truncated": bool((max_samples is not None and total > max_samples) or cut_length),
    }
    return Calibration(inputs, targets, batch_size, token_ids, provenance)


def read_safetensors(path: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise DatasetError(f"dataset: not a readable safetensors file ({exc})") from exc
    if "inputs" not in tensors:
        raise DatasetError(f"dataset: no tensor named 'inputs' (found: {', '.join(sorted(tensors)) or 'none'})")
    return tensors["inputs"], tensors.get("targets")


def _load_npz(path: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    import zipfile

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as archive:  # object arrays would need pickle: refused
            names = list(archive.files)
            if "inputs" not in names:
                raise DatasetError(f"dataset: no array named 'inputs' (found: {', '.join(sorted(names)) or 'none'})")
            inputs = np.ascontiguousarray(archive["inputs"])
            targets = np.ascontiguousarray(archive["targets"]) if "targets" in names else None
    except DatasetError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DatasetError(f"dataset: not a readable npz file ({exc})") from exc
    for name, arr in (("inputs", inputs), ("targets", targets)):
        if arr is not None and arr.dtype.kind not in "fiub":
            raise DatasetError(f"{name}: unsupported array dtype {arr.dtype} (numbers only)")
    return torch.from_numpy(inputs), None if targets is None else torch.from_numpy(targets)


def _read_texts(path: str, budget_tokens: int, tokenizer: Any) -> tuple[list[list[int]], str, int, bool]:
    """Token id lists of the documents until `budget_tokens` are in; (ids, format, docs, stopped early)."""
    docs: list[list[int]] = []
    fmt: str | None = None
    tokens = 0
    try:
        fh = open(path, encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise DatasetError(f"dataset: cannot read {path!r} ({exc})") from exc
    with fh:
        try:
            for number, line in enumerate(fh, start=1):
                text = line.rstrip("\n")
                if not text.strip():
                    continue
                if fmt is None:
                    fmt = "jsonl" if text.lstrip().startswith("{") else "text"
                if fmt == "jsonl":
                    try:
                        record = json.loads(text)
                    except json.JSONDecodeError as exc:
                        raise DatasetError(f"dataset: line {number} is not valid JSON ({exc.msg})") from exc
                    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                        raise DatasetError(f"dataset: line {number} has no string field \"text\"")
                    text = record["text"]
                ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
                if ids:
                    docs.append(ids)
                    tokens += len(ids) + 1
                if tokens >= budget_tokens:
                    return docs, fmt, len(docs), True
        except UnicodeDecodeError as exc:
            raise DatasetError("dataset: not safetensors, npz or UTF-8 text") from exc
    return docs, fmt or "text", len(docs), False


def _load_text(path, batch_size, max_samples, max_length, tokenizer, causal_lm) -> Calibration:
    if tokenizer is None:
        raise DatasetError("dataset: text calibration needs a model with its own tokenizer (a Hugging Face directory)")
    max_samples = max_samples or TEXT_DEFAULTS["max_samples"]
    max_length = max_length or TEXT_DEFAULTS["max_length"]
    if causal_lm and max_length < 2:
        raise ValueError("options.max_length: a causal LM needs at least 2 tokens per sample")
    docs, fmt, count, stopped = _read_texts(path, max_samples * max_length + 1, tokenizer)
    eos = getattr(tokenizer, "eos_token_id", None)
    stream: list[int] = []
    for ids in docs:
        stream.extend(ids)
        if eos is not None:
            stream.append(int(eos))
    if eos is not None and stream:
        stream.pop()
    if len(stream) < (2 if causal_lm else 1):
        raise DatasetError("dataset: the text holds no tokens (empty lines only?)")
    length = min(max_length, len(stream))
    windows = min(max_samples, len(stream) // length)
    inputs = torch.tensor(stream[: windows * length], dtype=torch.long).reshape(windows, length)
    targets = inputs[:, 1:].contiguous() if causal_lm else None
    provenance = {
        "format": fmt,
        "documents_read": count,
        "samples": windows,
        "max_samples": max_samples,
        "max_length": max_length,
        "sequence_length": length,
        "tokens": windows * length,
        "truncated": bool(stopped or len(stream) > windows * length),
        "targets": "next_token" if causal_lm else "none (label-free)",
    }
    return Calibration(inputs, targets, batch_size, True, provenance)
