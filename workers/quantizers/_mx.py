"""OCP Microscaling (MX v1.0) formats: blocks of 32 elements sharing one E8M0 scale.

    mxfp4            E2M1 elements          4 + 8/32 = 4.25 bits per weight
    mxfp6_e3m2       E3M2 elements          6.25
    mxfp6_e2m3       E2M3 elements          6.25
    mxfp8_e4m3       E4M3 elements          8.25
    mxfp8_e5m2       E5M2 elements          8.25

The shared scale is a power of two 2^X stored as an 8-bit biased exponent (E8M0, X in
[-127, 127]). Following the spec's conversion: X = floor(log2(max|w| of the block)) − emax, where
emax is the exponent of the element format's largest normal binade (E2M1 2, E3M2 4, E2M3 2, E4M3 8,
E5M2 15); elements are w / 2^X rounded to nearest-even on the element grid, saturating at its
largest finite value (the spec's rule lets a block's top values land in (max, 2^(emax+1)) before
saturation: that clipping is part of the format, so it is part of the damage). Blocks run along
each output channel's flattened weights (the reduction dimension), the last one zero-padded.
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

BLOCK = 32
_SCALE_BITS = 8  # E8M0
_NAME = re.compile(r"^mxfp(\d+)(?:_(e\dm\d))?$")


@dataclass(frozen=True, repr=False)
class MXQuantizer(Quantizer):
    element: str
    family: str = "mx"

    @property
    def weight_bits(self) -> int:  # type: ignore[override]
        return WIDTHS[self.element]

    @property
    def name(self) -> str:  # type: ignore[override]
        return "mxfp4" if self.element == "e2m1" else f"mxfp{self.weight_bits}_{self.element}"

    @property
    def ladder(self) -> str:
        return "mxfp" if self.element in MAIN_CHAIN else f"mxfp_{self.element}"

    def storage_bits(self, shape: Sequence[int]) -> int:
        numel = math.prod(int(s) for s in shape)
        return numel * self.weight_bits + block_count(shape, BLOCK) * _SCALE_BITS if numel else 0

    def quantize(self, weight: torch.Tensor) -> torch.Tensor:
        import torch

        fmt = ELEMENTS[self.element]
        w = weight.detach().to(torch.float32)
        if w.numel() == 0:
            return w.clone()
        blocks, restore = blocked(w, BLOCK)
        amax = blocks.abs().amax(dim=1, keepdim=True)
        _, exp = torch.frexp(amax)  # floor(log2(amax)) = exp - 1 for amax > 0
        shared = torch.clamp(exp - 1 - fmt.emax, -127, 127)
        scale = torch.ldexp(torch.ones_like(amax), shared)
        out = fmt.round(blocks / scale) * scale
        return restore(torch.where(amax > 0, out, torch.zeros_like(out)))


class MXFamily(Family):
    name = "mx"
    grammar = (
        "mxfp4 | mxfp6_e3m2 | mxfp6_e2m3 | mxfp8_e4m3 | mxfp8_e5m2: OCP MX, blocks of 32 weights with one"
        " E8M0 power-of-two scale (mxfp4 = E2M1 elements, 4.25 bits per weight)"
    )

    def parse(self, name: str) -> MXQuantizer | None:
        if not name.startswith("mx"):
            return None
        m = _NAME.match(name)
        if m is None:
            raise ValueError(f"candidate {name!r}: not a valid MX format ({self.grammar})")
        width, element = int(m.group(1)), m.group(2) or ("e2m1" if m.group(1) == "4" else None)
        if element is None or element not in ELEMENTS or WIDTHS[element] != width or m.group(1) != str(width):
            raise ValueError(f"candidate {name!r}: not a valid MX format ({self.grammar})")
        return MXQuantizer(element)
