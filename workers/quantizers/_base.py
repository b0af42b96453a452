"""The plug-in point for weight formats: a `Family` parses candidate names into `Quantizer`s."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import torch


class Quantizer(ABC):
    """One candidate weight format: how it rounds a weight and exactly what it costs to store.

    Rules for implementations:
    - Immutable value objects: equal names mean equal formats; safe to share between threads.
    - `quantize` is pure: it never modifies its input and returns the *dequantized* tensor (same
      shape, float32), i.e. exactly what an engine would compute with after loading the stored form.
      Any stored side data (scales, zero-points) is rounded to its storage type inside `quantize`.
    - `storage_bits` counts every stored bit (packed weights plus scales / zero-points / per-tensor
      factors); it needs only the shape, so costs can be computed without torch.
    - `ladder` names the set of candidates that differ from this one only in `weight_bits`; along a
      ladder more bits must never be predicted worse (the analysis enforces it).
    - torch is imported inside `quantize`, never at module import.
    - `activation_bits` is the width of the activations the layer computes with; it only enters
      costs (BOPs, roofline latency). Families never set it: the registry wraps any candidate
      named with an "_a<bits>" suffix (see workers.quantizers), and 16 (FP16/BF16 activations,
      i.e. weight-only quantization) is the default.
    """

    name: str
    family: str
    weight_bits: int
    activation_bits: int = 16

    @abstractmethod
    def quantize(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight after a round trip through this format (dequantized, float32)."""

    @abstractmethod
    def storage_bits(self, shape: Sequence[int]) -> int:
        """Exact number of bits that storing a weight of `shape` in this format takes."""

    @property
    @abstractmethod
    def ladder(self) -> str:
        """Key shared by the candidates of this family that differ only in weight bits."""

    def bytes(self, shape: Sequence[int]) -> int:
        """Storage in whole bytes: the packed bit stream rounded up once, scales included."""
        return math.ceil(self.storage_bits(shape) / 8)

    def bits_per_weight(self, shape: Sequence[int]) -> float:
        numel = math.prod(shape)
        return self.storage_bits(shape) / numel if numel else 0.0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class Family(ABC):
    """A family of formats (integer, float, ...) and the names it understands.

    Rules: `parse` returns None for names that are not its own (so the registry can ask every
    family) and raises `ValueError` for names that are its own but invalid (e.g. "int9"); it is pure
    and cheap (no torch). `grammar` is one human-readable line shown when no family matches.
    `available()` is False when an optional library the family needs is missing; it never raises.
    """

    name: ClassVar[str]
    grammar: ClassVar[str]

    def available(self) -> bool:
        return True

    @abstractmethod
    def parse(self, name: str) -> Quantizer | None:
        """The quantizer for `name`, or None when `name` belongs to another family."""
