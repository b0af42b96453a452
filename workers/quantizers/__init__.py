"""Weight formats (candidates): one module per family, one registry.

Candidate-name grammar (today one family; issue 4 adds float formats):
    int<b>[_asym][_tensor|_g<size>], b in 2..8
    int4           symmetric INT4, one FP16 scale per output channel   (the default shape)
    int4_asym      asymmetric: FP16 scale and FP16 offset per channel
    int8_tensor    one FP16 scale for the whole tensor
    int4_asym_g128 one FP16 scale and offset per 128 consecutive weights of a channel
Parsing and byte counts need no torch; only `Quantizer.quantize` imports it.
"""

from workers.quantizers._base import Family, Quantizer
from workers.quantizers._registry import (
    DEFAULT_CANDIDATES,
    candidate_grammar,
    families,
    parse_candidate,
    parse_candidates,
)

# A candidate is its format: the quantizer that rounds weights to it and counts its bytes.
Candidate = Quantizer

__all__ = [
    "DEFAULT_CANDIDATES",
    "Candidate",
    "Family",
    "Quantizer",
    "candidate_grammar",
    "families",
    "parse_candidate",
    "parse_candidates",
]
