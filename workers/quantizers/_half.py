"""Keep the layer in 16-bit floats: "fp16" (IEEE half) or "bf16" (bfloat16), no scale.

The "do not quantize this layer" option: a plan may leave sensitive layers here. Values beyond
FP16's range saturate to ±65504 rather than becoming infinities (no real weight is that large,
and an infinity would make the damage meaningless).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from workers.quantizers._base import Family, Quantizer

if TYPE_CHECKING:
    import torch

_FP16_MAX = 65504.0


@dataclass(frozen=True, repr=False)
class HalfQuantizer(Quantizer):
    name: str  # "fp16" | "bf16"
    family: str = "half"
    weight_bits: int = 16

    @property
    def ladder(self) -> str:
        return self.name

    def storage_bits(self, shape: Sequence[int]) -> int:
        return 16 * math.prod(int(s) for s in shape)

    def quantize(self, weight: torch.Tensor) -> torch.Tensor:
        import torch

        w = weight.detach().to(torch.float32)
        if self.name == "fp16":
            return w.clamp(-_FP16_MAX, _FP16_MAX).to(torch.float16).to(torch.float32)
        return w.to(torch.bfloat16).to(torch.float32)


class HalfFamily(Family):
    name = "half"
    grammar = "fp16 | bf16: keep the layer in 16-bit floats (no quantization, no scale)"

    def parse(self, name: str) -> HalfQuantizer | None:
        if name in ("fp16", "bf16"):
            return HalfQuantizer(name)
        if name.startswith(("fp16", "bf16")):
            raise ValueError(f"candidate {name!r}: the 16-bit formats take no options ({self.grammar})")
        return None
