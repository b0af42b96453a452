"""Calibration data in: a safetensors file with `inputs` and optional `targets`.

Targets are integer class indices, one per input row (or per position for sequence outputs);
with no targets the metrics use a label-free loss. Other tensors in the file are ignored.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from workers.errors import DatasetError

__all__ = ["Calibration", "load_calibration"]


@dataclass
class Calibration:
    """Calibration samples held in memory and served in fixed-size mini-batches (last one shorter)."""

    inputs: torch.Tensor
    targets: torch.Tensor | None = None
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.inputs.dim() < 1 or self.inputs.shape[0] == 0:
            raise DatasetError("inputs: must hold at least one sample (first dimension = samples)")
        if not self.inputs.dtype.is_floating_point:
            raise DatasetError(f"inputs: must be a floating-point tensor, got {self.inputs.dtype}")
        if not torch.isfinite(self.inputs).all():
            raise DatasetError("inputs: contains NaN or infinite values")
        self.inputs = self.inputs.to(torch.float32)
        if self.targets is not None:
            t = self.targets
            if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
                raise DatasetError(f"targets: must be integer class indices, got {t.dtype}")
            if t.dim() < 1 or t.shape[0] != self.inputs.shape[0]:
                raise DatasetError(
                    f"targets: first dimension {list(t.shape)[:1]} must equal the number of inputs"
                    f" {self.inputs.shape[0]}"
                )
            if (t < 0).any():
                raise DatasetError("targets: class indices must be ≥ 0")
            self.targets = t.to(torch.long)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"options.batch_size: must be a positive integer, got {self.batch_size!r}")

    @property
    def samples(self) -> int:
        return int(self.inputs.shape[0])

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        for start in range(0, self.samples, self.batch_size):
            stop = start + self.batch_size
            yield self.inputs[start:stop], None if self.targets is None else self.targets[start:stop]

    def __len__(self) -> int:
        return -(-self.samples // self.batch_size)


def load_calibration(path: str, *, batch_size: int = 256, max_samples: int | None = None) -> Calibration:
    """Read calibration data; `max_samples` keeps the first samples (the order is the file's)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise DatasetError(f"dataset: no such file {path!r}")
    try:
        tensors = load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise DatasetError(f"dataset: not a readable safetensors file ({exc})") from exc
    if "inputs" not in tensors:
        raise DatasetError(f"dataset: no tensor named 'inputs' (found: {', '.join(sorted(tensors)) or 'none'})")
    inputs, targets = tensors["inputs"], tensors.get("targets")
    if max_samples is not None:
        if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
            raise ValueError(f"options.max_samples: must be a positive integer, got {max_samples!r}")
        inputs = inputs[:max_samples]
        targets = None if targets is None else targets[:max_samples]
    return Calibration(inputs, targets, batch_size)
