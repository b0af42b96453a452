"""GGUF / llama.cpp block formats: the GGML types `llama-quantize` writes, e.g. gguf_q4_k.

    gguf_q2_k  2.625 bits/weight    gguf_q3_k  3.4375    gguf_q4_k  4.5    gguf_q5_k  5.5
    gguf_q6_k  6.5625               (k-quants: super-blocks of 256 weights, 6- or 4-bit sub-block
                                     scales under FP16 super-block scales)
    gguf_q4_0  4.5   gguf_q4_1  5.0   gguf_q5_0  5.5   gguf_q5_1  6.0   gguf_q8_0  8.5
                                    (blocks of 32 with an FP16 scale, _1 adds an FP16 min)
    gguf_mxfp4 4.25                 (GGML's MXFP4: E2M1 in blocks of 32, E8M0 scale)

Bits are the block struct's bytes (`gguf.GGML_QUANT_SIZES`) over its weights, scales included.
Blocks run along each row (the input dimension: GGML's ne[0]), exactly as llama.cpp lays tensors out.

Round trip: the legacy types and MXFP4 go through the `gguf` package's own quantize and dequantize;
the k-quants through a port of ggml's reference quantizers (`_kquants`: gguf 0.19 implements only
their dequantize) whose bytes gguf's dequantize decodes. Quantization is what `llama-quantize`
does without an importance matrix.

Row lengths that are not a multiple of the block: `llama-quantize` (src/llama-quant.cpp,
`tensor_type_fallback`) then writes another type, and so does bitplan, in damage and bytes alike:
Q2_K, Q3_K → Q4_0; Q4_K → Q5_0; Q5_K → Q5_1; Q6_K → Q8_0; and F16 when the row is not a multiple
of 32 either. The block-32 types have no fallback there (the tool stops), so bitplan refuses the
candidate for such a weight with a ValueError naming the shape.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from workers.quantizers._base import Family, Quantizer
from workers.quantizers._minifloat import rows_and_cols

if TYPE_CHECKING:
    import torch

# GGML type -> (weights per block, bytes per block, element bits, ladder); sizes as in
# gguf.GGML_QUANT_SIZES (a test checks they agree), kept here so costs need no gguf import.
TYPES: dict[str, tuple[int, int, int, str]] = {
    "Q2_K": (256, 84, 2, "gguf_k"),
    "Q3_K": (256, 110, 3, "gguf_k"),
    "Q4_K": (256, 144, 4, "gguf_k"),
    "Q5_K": (256, 176, 5, "gguf_k"),
    "Q6_K": (256, 210, 6, "gguf_k"),
    "Q8_0": (32, 34, 8, "gguf_k"),
    "Q4_0": (32, 18, 4, "gguf_0"),
    "Q5_0": (32, 22, 5, "gguf_0"),
    "Q4_1": (32, 20, 4, "gguf_1"),
    "Q5_1": (32, 24, 5, "gguf_1"),
    "MXFP4": (32, 17, 4, "gguf_mxfp4"),
}
# llama-quant.cpp tensor_type_fallback, for the types above
FALLBACK: dict[str, str] = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
_PREFIX = "gguf_"
_CHUNK = 4096  # blocks per numpy pass: bounds the temporaries of the k-quant scale searches


def stored_type(ggml_type: str, shape: Sequence[int]) -> str:
    """The GGML type llama-quantize writes for a weight of `shape` asked to be `ggml_type`
    ("F16" when it must fall back that far); ValueError when llama-quantize has no fallback."""
    _, cols = rows_and_cols(shape)
    block = TYPES[ggml_type][0]
    if cols % block == 0:
        return ggml_type
    fallback = FALLBACK.get(ggml_type)
    if fallback is None:
        raise ValueError(
            f"candidate gguf_{ggml_type.lower()}: rows of {cols} weights (shape {list(shape)}) are not a multiple of"
            f" {block}, and llama-quantize has no fallback type for {ggml_type} (it stops on such a tensor)"
        )
    return fallback if cols % TYPES[fallback][0] == 0 else "F16"


@dataclass(frozen=True, repr=False)
class GGUFQuantizer(Quantizer):
    ggml_type: str  # key of TYPES
    family: str = "gguf"

    def __post_init__(self) -> None:
        if self.ggml_type not in TYPES:
            raise ValueError(f"ggml_type: must be one of {', '.join(TYPES)}, got {self.ggml_type!r}")

    @property
    def name(self) -> str:  # type: ignore[override]
        return _PREFIX + self.ggml_type.lower()

    @property
    def weight_bits(self) -> int:  # type: ignore[override]
        return TYPES[self.ggml_type][2]

    @property
    def ladder(self) -> str:
        return TYPES[self.ggml_type][3]

    def storage_bits(self, shape: Sequence[int]) -> int:
        numel = math.prod(int(s) for s in shape)
        if numel == 0:
            return 0
        stored = stored_type(self.ggml_type, shape)
        if stored == "F16":
            return 16 * numel
        block, size = TYPES[stored][:2]
        return numel // block * size * 8

    def quantize(self, weight: torch.Tensor) -> torch.Tensor:
        import numpy as np
        import torch

        w = weight.detach().to(torch.float32)
        if w.numel() == 0:
            return w.clone()
        stored = stored_type(self.ggml_type, tuple(w.shape))
        if stored == "F16":
            return w.clamp(-65504.0, 65504.0).to(torch.float16).to(torch.float32)
        flat = w.reshape(-1).cpu().numpy().astype(np.float32)
        out = round_trip(flat, stored)
        return torch.from_numpy(out).reshape(w.shape).contiguous()


def round_trip(values, ggml_type: str):
    """float32 values (a whole number of blocks) through `ggml_type`'s stored bytes and back."""
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf import quants as gq

    from workers.quantizers._kquants import QUANTIZE

    qtype = GGMLQuantizationType[ggml_type]
    block = TYPES[ggml_type][0]
    blocks = values.reshape(-1, block)
    out = np.empty_like(blocks)
    for start in range(0, blocks.shape[0], _CHUNK):
        part = blocks[start : start + _CHUNK]
        if ggml_type in QUANTIZE:
            data = QUANTIZE[ggml_type](part)
        else:  # gguf works 16 rows per numpy pass: long rows of many blocks keep the passes few
            data = gq.quantize(part.reshape(-1, block * math.gcd(part.shape[0], 256)), qtype)
        out[start : start + _CHUNK] = gq.dequantize(data, qtype).reshape(part.shape)
    return out.reshape(values.shape)


class GGUFFamily(Family):
    name = "gguf"
    grammar = (
        "gguf_q2_k | gguf_q3_k | gguf_q4_k | gguf_q5_k | gguf_q6_k | gguf_q8_0 | gguf_q4_0 | gguf_q4_1 | gguf_q5_0"
        " | gguf_q5_1 | gguf_mxfp4: llama.cpp's GGML block types as llama-quantize writes them (e.g. gguf_q4_k ="
        " 4.5 bits per weight); needs the gguf package"
    )

    def available(self) -> bool:
        return importlib.util.find_spec("gguf") is not None

    def parse(self, name: str) -> GGUFQuantizer | None:
        if not name.startswith(_PREFIX):
            return None
        ggml_type = name[len(_PREFIX) :].upper()
        if ggml_type not in TYPES or name != _PREFIX + ggml_type.lower():
            raise ValueError(f"candidate {name!r}: not a GGUF type bitplan knows ({self.grammar})")
        return GGUFQuantizer(ggml_type)
