"""Scaled small-float weight formats: FP8 (E4M3, E5M2), FP6 (E3M2, E2M3), FP4 (E2M1).

    fp<w>_<eXmY>[_tensor|_g<size>]     e.g. fp8_e4m3, fp4_e2m1_g32, fp8_e5m2_tensor

A scale maps each channel's (or tensor's, or group's) largest magnitude onto the format's largest
finite value: scale = max|w| / max_value, stored as FP32 (what FP8 checkpoints in vLLM / ModelOpt
store; FP16 would underflow for E5M2's 57344 divisor), and w' = round_ExMy(w / scale) · scale with
round-to-nearest-even onto the exact grid (see _minifloat). Channels are the first weight dimension;
a group is `size` consecutive weights of one channel over the flattened remaining dimensions.
Block-scaled standards with their own scale encodings (MX, NVFP4) are separate families.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from workers.quantizers._base import Family, Quantizer
from workers.quantizers._minifloat import ELEMENTS, MAIN_CHAIN, WIDTHS, block_count, blocked

if TYPE_CHECKING:
    import torch

_SCALE_BITS = 32
_NAME = re.compile(r"^fp(\d+)_(e\dm\d)(?:(_tensor)|_g(\d+))?$")


@dataclass(frozen=True, repr=False)
class FloatQuantizer(Quantizer):
    element: str  # key of ELEMENTS
    granularity: str = "channel"  # "channel" | "tensor" | "group"
    group_size: int | None = None
    family: str = "float"

    def __post_init__(self) -> None:
        if self.element not in ELEMENTS:
            raise ValueError(f"element: must be one of {', '.join(ELEMENTS)}, got {self.element!r}")
        if (self.granularity == "group") != (self.group_size is not None):
            raise ValueError("group_size: a positive integer for group-wise formats, None otherwise")

    @property
    def weight_bits(self) -> int:  # type: ignore[override]
        return WIDTHS[self.element]

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"fp{self.weight_bits}_{self.element}{self._suffix()}"

    @property
    def ladder(self) -> str:
        chain = "fp" if self.element in MAIN_CHAIN else f"fp_{self.element}"
        return chain + self._suffix()

    def _suffix(self) -> str:
        return {"channel": "", "tensor": "_tensor"}.get(self.granularity, f"_g{self.group_size}")

    def _block(self, shape: Sequence[int]) -> int | None:
        return self.group_size if self.granularity == "group" else None

    def storage_bits(self, shape: Sequence[int]) -> int:
        numel = math.prod(int(s) for s in shape)
        if numel == 0:
            return 0
        scales = 1 if self.granularity == "tensor" else block_count(shape, self._block(shape))
        return numel * self.weight_bits + scales * _SCALE_BITS

    def quantize(self, weight: torch.Tensor) -> torch.Tensor:
        import torch

        fmt = ELEMENTS[self.element]
        w = weight.detach().to(torch.float32)
        if w.numel() == 0:
            return w.clone()
        if self.granularity == "tensor":
            blocks, restore = w.reshape(1, -1), (lambda out: out.reshape(w.shape).contiguous())
        else:
            blocks, restore = blocked(w, self._block(w.shape))
        scale = blocks.abs().amax(dim=1, keepdim=True) / fmt.max_value  # FP32, stored as is
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return restore(fmt.round(blocks / scale) * scale)


class FloatFamily(Family):
    name = "float"
    grammar = (
        "fp<w>_<eXmY>[_tensor|_g<size>] with eXmY in e4m3, e5m2 (w=8), e3m2, e2m3 (w=6), e2m1 (w=4):"
        " one FP32 scale per output channel by default, per tensor (_tensor) or per <size> weights"
        " of a channel (_g<size>) (e.g. fp8_e4m3, fp4_e2m1_g32)"
    )

    def parse(self, name: str) -> FloatQuantizer | None:
        if not name.startswith("fp") or name.startswith("fp16"):  # fp16 is the half family's
            return None
        m = _NAME.match(name)
        if m is None:
            raise ValueError(f"candidate {name!r}: not a valid float format ({self.grammar})")
        width, element = int(m.group(1)), m.group(2)
        if element not in ELEMENTS:
            raise ValueError(f"candidate {name!r}: unknown element format {element!r} (valid: {', '.join(ELEMENTS)})")
        if WIDTHS[element] != width or m.group(1) != str(width):
            raise ValueError(f"candidate {name!r}: {element} is a {WIDTHS[element]}-bit format")
        if m.group(3):
            return FloatQuantizer(element, "tensor")
        if m.group(4) is not None:
            size = int(m.group(4))
            if size < 1 or m.group(4) != str(size):
                raise ValueError(f"candidate {name!r}: group size must be a positive integer without leading zeros")
            return FloatQuantizer(element, "group", size)
        return FloatQuantizer(element)
