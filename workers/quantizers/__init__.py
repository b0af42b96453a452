"""Weight formats (candidates): one module per family, one registry.

Candidate-name grammar, one family per line (a name belongs to the family whose prefix it has):

    int<b>[_asym][_tensor|_g<size>]      integer, b in 2..8                          _integer.py
        int4           symmetric INT4, one FP16 scale per output channel (the default shape)
        int4_asym      asymmetric: FP16 scale and FP16 offset per channel
        int8_tensor    one FP16 scale for the whole tensor
        int4_g128      one FP16 scale per 128 consecutive weights of a channel (4.125 bits/weight)
    fp<w>_<eXmY>[_tensor|_g<size>]       scaled small floats, FP32 scales             _float.py
        fp8_e4m3 (max 448, OCP, no inf)  fp8_e5m2 (max 57344)
        fp6_e3m2 (max 28)  fp6_e2m3 (max 7.5)  fp4_e2m1 (0, .5, 1, 1.5, 2, 3, 4, 6)
    mxfp4 | mxfp6_e3m2 | mxfp6_e2m3 | mxfp8_e4m3 | mxfp8_e5m2
                                         OCP MX: blocks of 32, E8M0 scale (mxfp4 = 4.25)  _mx.py
    nvfp4                                E2M1, blocks of 16, E4M3 scale + FP32 tensor scale
                                         (4.5 bits/weight + 32 bits per tensor)       _nvfp4.py
    fp16 | bf16                          keep the layer in 16-bit floats              _half.py
    gguf_q2_k .. gguf_q6_k | gguf_q8_0 | gguf_q4_0 | gguf_q4_1 | gguf_q5_0 | gguf_q5_1 | gguf_mxfp4
                                         llama.cpp's GGML block types as llama-quantize writes them
                                         (gguf_q4_k = 4.5 bits/weight); gguf package  _gguf.py
    <any of the above>_a<bits>           a W/A pair: activations of <bits> (2..16) bits for BOPs
                                         and latency; without the suffix activations are 16-bit
                                         (weight-only quantization)                   _activations.py

Every name has one spelling (the registry rejects aliases with the canonical form), so names are
table keys. Rounding is to nearest, ties to even, onto each format's exact grid; byte counts
include every scale, offset and per-tensor factor. Families sit in one registry (`FAMILIES`).
Parsing and byte counts need no torch; only `Quantizer.quantize` imports it.
"""

from workers.quantizers._base import Family, Quantizer
from workers.quantizers._registry import (
    DEFAULT_CANDIDATES,
    FAMILIES,
    candidate_grammar,
    families,
    parse_candidate,
    parse_candidates,
)

# A candidate is its format: the quantizer that rounds weights to it and counts its bytes.
Candidate = Quantizer

__all__ = [
    "DEFAULT_CANDIDATES",
    "FAMILIES",
    "Candidate",
    "Family",
    "Quantizer",
    "candidate_grammar",
    "families",
    "parse_candidate",
    "parse_candidates",
]
