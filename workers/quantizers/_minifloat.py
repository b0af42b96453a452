"""Element grids of the small floating-point formats, and round-to-nearest-even onto them.

A format ExMy has e exponent bits, m mantissa bits and bias 2^(e-1) - 1. Its smallest normal
exponent is 1 - bias; below it the subnormals share that exponent's spacing 2^(1 - bias - m). The
largest finite magnitude is stated per format rather than derived, because the formats disagree on
which top codes they reserve: E5M2 keeps IEEE infinities and NaNs (max 57344), OCP E4M3 keeps one
NaN code and no infinity (max 448), the FP6 / FP4 formats reserve nothing (28, 7.5, 6).

Rounding: |x| is split as 2^E · f with E the exponent of its binade (never below the smallest
normal one), the grid spacing there is 2^(E - m), and `torch.round` (half-to-even) picks the grid
point. Results past the largest finite value saturate to it (the OCP "saturating" conversion):
scaled weights only overshoot by rounding, and an infinity would poison every later product.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Minifloat:
    """One element format; `emax` is the exponent of its largest normal binade (used by MX)."""

    name: str  # "e4m3", ...
    exponent_bits: int
    mantissa_bits: int
    max_value: float

    @property
    def bits(self) -> int:
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def bias(self) -> int:
        return 2 ** (self.exponent_bits - 1) - 1

    @property
    def emin(self) -> int:
        return 1 - self.bias

    @property
    def emax(self) -> int:
        import math

        return math.floor(math.log2(self.max_value))

    def round(self, x: torch.Tensor) -> torch.Tensor:
        """`x` (float32) rounded to the nearest representable value, ties to even, saturating."""
        import torch

        x = x.to(torch.float32)
        mag = x.abs()
        _, exp = torch.frexp(mag)  # mag = f · 2^exp with f in [0.5, 1): binade exponent = exp - 1
        binade = torch.clamp(exp - 1, min=self.emin)
        step = torch.ldexp(torch.ones_like(mag), binade - self.mantissa_bits)
        q = torch.round(mag / step) * step
        q = torch.clamp(q, max=self.max_value)
        q = torch.where(mag == 0, torch.zeros_like(q), q)
        return torch.copysign(q, x)

    def values(self) -> list[float]:
        """Every non-negative finite value, enumerated from the bit codes (for tests and docs)."""
        out = set()
        for field in range(2**self.exponent_bits):
            for k in range(2**self.mantissa_bits):
                frac = k / 2**self.mantissa_bits
                v = frac * 2.0**self.emin if field == 0 else (1 + frac) * 2.0 ** (field - self.bias)
                if v <= self.max_value:
                    out.add(v)
        return sorted(out)


E4M3 = Minifloat("e4m3", 4, 3, 448.0)
E5M2 = Minifloat("e5m2", 5, 2, 57344.0)
E3M2 = Minifloat("e3m2", 3, 2, 28.0)
E2M3 = Minifloat("e2m3", 2, 3, 7.5)
E2M1 = Minifloat("e2m1", 2, 1, 6.0)

ELEMENTS: dict[str, Minifloat] = {f.name: f for f in (E4M3, E5M2, E3M2, E2M3, E2M1)}
# Which element formats exist at each width: the candidate name spells both, e.g. fp6_e3m2.
WIDTHS: dict[str, int] = {f.name: f.bits for f in ELEMENTS.values()}
# The chain "more bits never worse" is assumed along (more exponent AND mantissa bits each step);
# e2m3 and e5m2 are off it (each loses to a narrower chain member in range or precision).
MAIN_CHAIN = ("e2m1", "e3m2", "e4m3")


def rows_and_cols(shape) -> tuple[int, int]:
    """Channels are the first dimension; a 1-D weight is one channel (as for integer formats)."""
    import math

    if len(shape) == 0:
        return 1, 1
    rows = int(shape[0]) if len(shape) >= 2 else 1
    numel = math.prod(int(s) for s in shape)
    return rows, (numel // rows if rows else 0)


def blocked(weight: torch.Tensor, size: int | None):
    """(blocks, restore): the weight as (n_blocks, block) rows of `size` consecutive weights of one
    channel (None: one block per channel), padded with zeros; `restore` undoes it. Zero padding
    never changes a block's max |w|, which is all the float formats' scales depend on."""
    import torch

    w = weight.detach().to(torch.float32)
    rows, cols = rows_and_cols(tuple(w.shape))
    flat = w.reshape(rows, cols)
    if size is None:
        return flat, lambda out: out.reshape(w.shape).contiguous()
    pad = -cols % size
    if pad:
        flat = torch.cat([flat, flat.new_zeros(rows, pad)], dim=1)

    def restore(out: torch.Tensor) -> torch.Tensor:
        return out.reshape(rows, cols + pad)[:, :cols].reshape(w.shape).contiguous()

    return flat.reshape(-1, size), restore


def block_count(shape, size: int | None) -> int:
    import math

    rows, cols = rows_and_cols(shape)
    if rows * cols == 0:
        return 0
    return rows if size is None else rows * math.ceil(cols / size)
