"""W/A pairs: a weight format plus the activation width the layer computes with ("int4_a8").

The activation width changes no weight and no byte count; it only enters the compute costs
(BOPs = MACs × w_bits × a_bits, the roofline's throughput and activation traffic). Wrapping any
family's quantizer keeps the suffix one rule for every family instead of a grammar per family.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from workers.quantizers._base import Quantizer

if TYPE_CHECKING:
    import torch

DEFAULT_ACTIVATION_BITS = 16
MIN_ACTIVATION_BITS, MAX_ACTIVATION_BITS = 2, 16
SUFFIX = re.compile(r"^(?P<base>.+)_a(?P<bits>\d+)$")


@dataclass(frozen=True, repr=False)
class WithActivations(Quantizer):
    base: Quantizer
    activation_bits: int

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"{self.base.name}_a{self.activation_bits}"

    @property
    def family(self) -> str:  # type: ignore[override]
        return self.base.family

    @property
    def weight_bits(self) -> int:  # type: ignore[override]
        return self.base.weight_bits

    @property
    def ladder(self) -> str:
        # more weight bits at the same activation width: the pair keeps its own ladder
        return f"{self.base.ladder}_a{self.activation_bits}"

    def storage_bits(self, shape: Sequence[int]) -> int:
        return self.base.storage_bits(shape)

    def quantize(self, weight: torch.Tensor) -> torch.Tensor:
        return self.base.quantize(weight)
