"""NVFP4: E2M1 elements in blocks of 16, one FP8 E4M3 scale per block, one FP32 scale per tensor.

    nvfp4        4 + 8/16 = 4.5 bits per weight, plus 32 bits per tensor

Two-level scaling as NVIDIA's TensorRT Model Optimizer quantizes weights: the tensor scale
s = max|W| / (6 · 448) (FP32) lets the block scales use E4M3's whole range; a block's scale is
max|block| / 6 / s rounded to E4M3 (nearest-even, saturating); elements are w / (scale_b · s)
rounded to E2M1; w' = e · scale_b · s. A block whose scale rounds to zero dequantizes to zeros.
Blocks run along each output channel's flattened weights, the last one zero-padded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from workers.quantizers._base import Family, Quantizer
from workers.quantizers._minifloat import E2M1, E4M3, block_count, blocked

if TYPE_CHECKING:
    import torch

BLOCK = 16
_BLOCK_SCALE_BITS = 8  # FP8 E4M3
_TENSOR_SCALE_BITS = 32  # FP32


@dataclass(frozen=True, repr=False)
class NVFP4Quantizer(Quantizer):
    name: str = "nvfp4"
    family: str = "nvfp4"
    weight_bits: int = 4

    @property
    def ladder(self) -> str:
        return "nvfp4"

    def storage_bits(self, shape: Sequence[int]) -> int:
        numel = math.prod(int(s) for s in shape)
        if numel == 0:
            return 0
        return numel * 4 + block_count(shape, BLOCK) * _BLOCK_SCALE_BITS + _TENSOR_SCALE_BITS

    def quantize(self, weight: torch.Tensor) -> torch.Tensor:
        import torch

        w = weight.detach().to(torch.float32)
        if w.numel() == 0:
            return w.clone()
        blocks, restore = blocked(w, BLOCK)
        amax = w.abs().amax()
        tensor_scale = amax / (E2M1.max_value * E4M3.max_value)
        if float(tensor_scale) == 0.0:
            return torch.zeros_like(w)
        block_scale = E4M3.round(blocks.abs().amax(dim=1, keepdim=True) / E2M1.max_value / tensor_scale)
        scale = block_scale * tensor_scale
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        out = E2M1.round(blocks / safe) * scale
        return restore(out)


class NVFP4Family(Family):
    name = "nvfp4"
    grammar = "nvfp4: E2M1 in blocks of 16 with an FP8 E4M3 scale each plus one FP32 tensor scale (4.5 bits per weight)"

    def parse(self, name: str) -> NVFP4Quantizer | None:
        if not name.startswith("nv"):
            return None
        if name != "nvfp4":
            raise ValueError(f"candidate {name!r}: not a valid NV format ({self.grammar})")
        return NVFP4Quantizer()
