"""One suite run against every registered format family and sample candidates of each: the rules of
`Quantizer` and `Family` (workers/quantizers/_base.py) checked the same way for all of them.
Format-specific grids and bit-exact values live in tests/workers/test_quantizers*.py."""

import math

import pytest
import torch

from workers.quantizers import FAMILIES, Family, Quantizer, candidate_grammar, families, parse_candidate

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Sample candidates per family: its shapes of name (granularity, symmetry, element format). A new
# family must add its own here (test_every_family_has_samples).
SAMPLES = {
    "integer": ["int2", "int4", "int8", "int4_asym", "int8_tensor", "int4_g128", "int3_asym_g64"],
    "float": ["fp8_e4m3", "fp8_e5m2", "fp6_e3m2", "fp6_e2m3", "fp4_e2m1", "fp4_e2m1_g16", "fp8_e4m3_tensor"],
    "mx": ["mxfp4", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp8_e4m3", "mxfp8_e5m2"],
    "nvfp4": ["nvfp4"],
    "half": ["fp16", "bf16"],
    "gguf": ["gguf_q2_k", "gguf_q3_k", "gguf_q4_k", "gguf_q5_k", "gguf_q6_k", "gguf_q8_0", "gguf_q4_0", "gguf_q4_1",
             "gguf_q5_0", "gguf_q5_1", "gguf_mxfp4"],
}
# llama.cpp's Q3_K picks its scales by a search that does not reproduce on its own output.
NOT_IDEMPOTENT = {"gguf_q3_k"}
SHAPE = (4, 256)  # whole blocks for every family (GGUF super-blocks are 256 weights)
CASES = [(family, name) for family, names in SAMPLES.items() for name in names]


def _weight() -> torch.Tensor:
    w = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    w[1] = 0.0  # an all-zero row must not divide by zero
    w[2, :128] *= 1e-30  # nor tiny values
    return w


def _needs(family: str) -> None:
    state = FAMILIES.available(family)
    if not state:
        assert state.reason  # an unavailable family says why
        with pytest.raises(ValueError, match=f"the {family} family is not available here"):
            parse_candidate(SAMPLES[family][0])
        pytest.skip(f"{family}: {state.reason}")


def test_every_family_has_samples():
    assert set(FAMILIES.names()) == set(SAMPLES)


@pytest.mark.parametrize("family", FAMILIES.names())
def test_family_follows_the_rules(family):
    _needs(family)
    fam = FAMILIES.get(family)
    assert isinstance(fam, Family) and fam.name == family and families()[family] is fam
    assert isinstance(fam.grammar, str) and f"- {family}: {fam.grammar}" in candidate_grammar()
    assert fam.parse("zz_not_a_format") is None  # other families' names are not its own
    for name in SAMPLES[family]:
        q = fam.parse(name)
        assert isinstance(q, Quantizer) and q.name == name and q.family == family


@pytest.mark.parametrize(("family", "name"), CASES)
def test_candidate_follows_the_rules(family, name):
    _needs(family)
    q = parse_candidate(name)
    assert parse_candidate(name) == q and q.name == name  # one spelling, a value object
    w = _weight()
    before = w.clone()
    out = q.quantize(w)
    assert torch.equal(w, before)  # pure
    assert out.shape == w.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], w[1])  # zero stays zero
    again = q.quantize(out)
    if name in NOT_IDEMPOTENT:
        assert float((again - out).abs().max()) <= 2 * float((out - w).abs().max())
    else:
        assert torch.equal(again, out)  # already on the grid: a second round trip changes nothing


@pytest.mark.parametrize(("family", "name"), CASES)
def test_costs_are_consistent(family, name):
    _needs(family)
    q = parse_candidate(name)
    bits = q.storage_bits(SHAPE)
    assert isinstance(bits, int) and bits > 0
    assert q.bytes(SHAPE) == math.ceil(bits / 8)
    assert q.bits_per_weight(SHAPE) == bits / math.prod(SHAPE) >= q.weight_bits > 0
    assert isinstance(q.ladder, str) and q.ladder
    paired = parse_candidate(f"{name}_a8")  # every family pairs with an activation width the same way
    assert paired.activation_bits == 8 and paired.storage_bits(SHAPE) == bits and q.activation_bits == 16


def test_a_family_that_cannot_run_says_why():
    class Missing(Family):
        name = "missing"
        grammar = "zzq<b>"
        requires = "the zzq library"

        def available(self) -> bool:
            return False

        def parse(self, name):
            return object() if name.startswith("zzq") else None

    FAMILIES.register(Missing())
    try:
        assert "missing" not in families()
        assert FAMILIES.available("missing").reason == "needs the zzq library"
        assert "- missing: not available here (needs the zzq library)" in candidate_grammar()
        with pytest.raises(ValueError, match=r"^candidate 'zzq4': the missing family is not available here \(needs"):
            parse_candidate("zzq4")
        assert parse_candidate("int4").name == "int4"
    finally:
        FAMILIES.unregister("missing")
    with pytest.raises(ValueError, match="unknown format"):
        parse_candidate("zzq4")
