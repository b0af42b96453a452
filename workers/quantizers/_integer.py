"""Integer weight formats INT2..INT8: symmetric or asymmetric; per-channel, per-tensor or group-wise.

Symmetric: scale = max|w| / (2^(b-1) - 1), q = clamp(round(w / scale), -(2^(b-1) - 1), 2^(b-1) - 1)
(the restricted, zero-centred range; -2^(b-1) is unused so ±max map exactly), w' = q · scale.
Asymmetric: offset = min w, scale = (max w - min w) / (2^b - 1), q = clamp(round((w - offset) / scale),
0, 2^b - 1), w' = q · scale + offset.
Scales and offsets are stored as FP16 and rounded to FP16 before use; rounding is half-to-even.
Channels are the first weight dimension (output channels; rows of an embedding); a group is `g`
consecutive weights of one channel over the flattened remaining dimensions, the last group of a
channel possibly shorter.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from workers.quantizers._base import Family, Quantizer

if TYPE_CHECKING:
    import torch

_SCALE_BITS = 16  # FP16 scale, and FP16 offset for asymmetric formats
_FP16_MAX = 65504.0
_NAME = re.compile(r"^int(\d+)(_asym)?(?:(_tensor)|_g(\d+))?$")


@dataclass(frozen=True, repr=False)
class IntegerQuantizer(Quantizer):
    weight_bits: int
    symmetric: bool = True
    granularity: str = "channel"  # "channel" | "tensor" | "group"
    group_size: int | None = None
    family: str = "integer"

    def __post_init__(self) -> None:
        if not 2 <= self.weight_bits <= 8:
            raise ValueError(f"weight_bits: integer formats have 2 to 8 bits, got {self.weight_bits}")
        if self.granularity not in ("channel", "tensor", "group"):
            raise ValueError(f"granularity: must be channel, tensor or group, got {self.granularity!r}")
        if (self.granularity == "group") != (self.group_size is not None) or (
            self.group_size is not None and self.group_size < 1
        ):
            raise ValueError("group_size: a positive integer for group-wise formats, None otherwise")

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"int{self.weight_bits}{self._suffix()}"

    @property
    def ladder(self) -> str:
        return f"int{self._suffix()}"

    def _suffix(self) -> str:
        suffix = "" if self.symmetric else "_asym"
        if self.granularity == "tensor":
            suffix += "_tensor"
        elif self.granularity == "group":
            suffix += f"_g{self.group_size}"
        return suffix

    def _rows(self, shape: Sequence[int]) -> tuple[int, int]:
        if len(shape) == 0:
            return 1, 1
        rows = int(shape[0]) if len(shape) >= 2 else 1
        numel = math.prod(int(s) for s in shape)
        return rows, (numel // rows if rows else 0)

    def scale_count(self, shape: Sequence[int]) -> int:
        rows, cols = self._rows(shape)
        if rows * cols == 0:
            return 0
        if self.granularity == "tensor":
            return 1
        if self.granularity == "channel":
            return rows
        return rows * math.ceil(cols / self.group_size)

    def storage_bits(self, shape: Sequence[int]) -> int:
        numel = math.prod(int(s) for s in shape)
        per_scale = _SCALE_BITS * (1 if self.symmetric else 2)
        return numel * self.weight_bits + self.scale_count(shape) * per_scale

    def quantize(self, weight: torch.Tensor) -> torch.Tensor:
        import torch

        w = weight.detach().to(torch.float32)
        if w.numel() == 0:
            return w.clone()
        rows, cols = self._rows(tuple(w.shape))
        flat = w.reshape(rows, cols)
        pad = 0
        if self.granularity == "tensor":
            blocks = flat.reshape(1, -1)
        elif self.granularity == "channel":
            blocks = flat
        else:
            g = self.group_size
            pad = -cols % g
            if pad:  # repeat the row's last value: it leaves the last group's min and max unchanged
                flat = torch.cat([flat, flat[:, -1:].expand(rows, pad)], dim=1)
            blocks = flat.reshape(-1, g)
        deq = self._round_trip(blocks)
        if pad:
            deq = deq.reshape(rows, cols + pad)[:, :cols]
        return deq.reshape(w.shape).contiguous()

    def _round_trip(self, blocks: torch.Tensor) -> torch.Tensor:
        import torch

        def fp16(x: torch.Tensor) -> torch.Tensor:
            return x.clamp(-_FP16_MAX, _FP16_MAX).to(torch.float16).to(torch.float32)

        if self.symmetric:
            qmax = 2 ** (self.weight_bits - 1) - 1
            scale = fp16(blocks.abs().amax(dim=1, keepdim=True) / qmax)
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            q = torch.clamp(torch.round(blocks / scale), -qmax, qmax)
            return q * scale
        levels = 2**self.weight_bits - 1
        lo = blocks.amin(dim=1, keepdim=True)
        hi = blocks.amax(dim=1, keepdim=True)
        scale = fp16((hi - lo) / levels)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        offset = fp16(lo)
        q = torch.clamp(torch.round((blocks - offset) / scale), 0, levels)
        return q * scale + offset


class IntegerFamily(Family):
    name = "integer"
    grammar = (
        "int<b>[_asym][_tensor|_g<size>] with b in 2..8: symmetric per-output-channel by default"
        " (one FP16 scale per channel); _asym adds an FP16 offset; _tensor = one scale for the"
        " whole tensor; _g<size> = one scale per <size> consecutive weights of a channel"
        " (e.g. int4, int8_tensor, int4_asym_g128)"
    )

    def parse(self, name: str) -> IntegerQuantizer | None:
        if not name.startswith("int"):
            return None
        m = _NAME.match(name)
        if m is None:
            raise ValueError(f"candidate {name!r}: not a valid integer format ({self.grammar})")
        bits = int(m.group(1))
        if not 2 <= bits <= 8 or m.group(1) != str(bits):
            raise ValueError(f"candidate {name!r}: integer formats have 2 to 8 bits")
        symmetric = m.group(2) is None
        if m.group(3):
            return IntegerQuantizer(bits, symmetric, "tensor")
        if m.group(4) is not None:
            size = int(m.group(4))
            if size < 1 or m.group(4) != str(size):
                raise ValueError(f"candidate {name!r}: group size must be a positive integer without leading zeros")
            return IntegerQuantizer(bits, symmetric, "group", size)
        return IntegerQuantizer(bits, symmetric, "channel")
