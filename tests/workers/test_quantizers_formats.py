"""Float, MX, NVFP4, 16-bit and W/A candidates: bit-exact on hand-computed tensors, exact bytes."""

import math
import subprocess
import sys

import pytest
import torch

from workers.analysis import enforce_monotone
from workers.quantizers import candidate_grammar, parse_candidate, parse_candidates
from workers.quantizers._minifloat import E2M1, E2M3, E3M2, E4M3, E5M2
from workers.table import CandidateRow


def q(name, values):
    return parse_candidate(name).quantize(torch.tensor(values, dtype=torch.float32)).tolist()


def test_element_grids_have_the_documented_ranges():
    assert E2M1.values() == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert (E4M3.values()[-1], E5M2.values()[-1], E3M2.values()[-1], E2M3.values()[-1]) == (448, 57344, 28, 7.5)
    # non-negative finite codes: E4M3 keeps one NaN code per sign, E5M2 infinities and three NaNs
    assert (len(E4M3.values()), len(E5M2.values()), len(E3M2.values()), len(E2M3.values())) == (127, 124, 32, 32)
    assert (E4M3.values()[1], E5M2.values()[1]) == (2.0**-9, 2.0**-16)  # smallest subnormals


@pytest.mark.parametrize("fmt", [E2M1, E2M3, E3M2, E4M3, E5M2])
def test_every_grid_value_round_trips_and_midpoints_go_to_even(fmt):
    grid = torch.tensor(fmt.values())
    assert torch.equal(fmt.round(grid), grid) and torch.equal(fmt.round(-grid), -grid)
    mids = (grid[1:] + grid[:-1]) / 2
    out = fmt.round(mids)
    # a midpoint goes to whichever neighbour has an even last mantissa bit
    lo, hi = grid[:-1], grid[1:]
    assert bool(((out == lo) | (out == hi)).all())
    assert fmt.round(torch.tensor([fmt.max_value * 1.04, 1e30])).tolist() == [fmt.max_value] * 2  # saturates


def test_fp4_e2m1_per_channel_is_bit_exact():
    # amax 6 -> scale 1; 2.5 and 1.25 are ties that go to the even codes 2 and 1; 0.25 ties to 0
    row = [6.0, 0.74, 0.76, 2.5, -5.0, 1.25, 0.25, 3.5]
    assert q("fp4_e2m1", [row, [3.0, 1.0, 0.7, -0.1, 0, 0, 0, 0]]) == [
        [6.0, 0.5, 1.0, 2.0, -4.0, 1.0, 0.0, 4.0],
        [3.0, 1.0, 0.75, 0.0, 0, 0, 0, 0],  # own scale 0.5: 0.7/0.5 = 1.4 -> 1.5, -0.2 -> 0
    ]


def test_fp8_fp6_grids_are_bit_exact():
    # E4M3: step 1/8 in [1, 2): 1.0625 ties to 1.0, 1.1875 ties to 1.25; 300 -> 288 (step 32); 2^-10 -> 0
    assert q("fp8_e4m3", [[448.0, 1.0625, 1.1875, 300.0, 2.0**-9, 2.0**-10]]) == [
        [448.0, 1.0, 1.25, 288.0, 2.0**-9, 0.0]
    ]
    # E5M2: step 1/4 in [1, 2)
    assert q("fp8_e5m2", [[57344.0, 1.125, 1.375, 2.0**-16]]) == [[57344.0, 1.0, 1.5, 2.0**-16]]
    # E3M2: 13 is a tie in [8, 16) (step 2) -> 12; subnormal step 1/16
    assert q("fp6_e3m2", [[28.0, 13.0, 0.09375, 0.03125]]) == [[28.0, 12.0, 0.125, 0.0]]
    # E2M3: 5.25 ties in [4, 8) (step 1/2) -> 5.0; subnormal step 1/8
    assert q("fp6_e2m3", [[7.5, 5.25, 0.1875, 0.0625]]) == [[7.5, 5.0, 0.25, 0.0]]


def test_float_tensor_and_group_scales():
    assert q("fp8_e4m3_tensor", [[448.0, 1.0], [224.0, 3.0]]) == [[448.0, 1.0], [224.0, 3.0]]
    # groups of 2: [6, 1.2] scale 1 -> 1.2 -> 1; [1.5, 0.3] scale 0.25 -> 0.3/0.25 = 1.2 -> 1 -> 0.25
    assert q("fp4_e2m1_g2", [[6.0, 1.2, 1.5, 0.3]]) == [[6.0, 1.0, 1.5, 0.25]]


def test_mxfp4_shared_exponent_follows_the_spec():
    pad = [0.0] * 24
    rows = [
        [6.0, 0.74, 0.76, 2.5, -5.0, 1.25, 0.25, 3.5, *pad],  # amax 6: X = 2 - 2 = 0
        [7.0, 5.0, *[0.0] * 30],  # amax 7: X = 0 too, so 7 saturates to 6 (clipping is the format's)
        [0.75, 0.1, *[0.0] * 30],  # X = -1 - 2 = -3: scale 1/8; 0.8 -> 1 -> 0.125
        [12.0, 5.0, *[0.0] * 30],  # X = 1: scale 2; 2.5 ties to 2 -> 4
    ]
    out = q("mxfp4", rows)
    assert [r[:8] for r in out] == [
        [6.0, 0.5, 1.0, 2.0, -4.0, 1.0, 0.0, 4.0],
        [6.0, 4.0, 0, 0, 0, 0, 0, 0],
        [0.75, 0.125, 0, 0, 0, 0, 0, 0],
        [12.0, 4.0, 0, 0, 0, 0, 0, 0],
    ]


def test_mx_blocks_are_32_along_the_channel():
    w = torch.zeros(2, 40)
    w[0, 0], w[0, 1], w[0, 32], w[0, 33] = 448.0, 1.0625, 1.0, 0.5  # block 1 amax 448, block 2 amax 1
    out = parse_candidate("mxfp8_e4m3").quantize(w)
    assert out[0, :2].tolist() == [448.0, 1.0] and out[0, 32:34].tolist() == [1.0, 0.5]
    assert parse_candidate("mxfp8_e4m3").storage_bits([2, 40]) == 80 * 8 + 4 * 8
    assert q("mxfp6_e3m2", [[28.0, 13.0, *[0.0] * 30]])[0][:2] == [28.0, 12.0]  # emax 4: X = 0


def test_nvfp4_two_level_scales_are_bit_exact():
    w = torch.zeros(1, 64)
    w[0, :8] = torch.tensor([6.0, 0.74, 0.76, 2.5, -5.0, 1.25, 0.25, 3.5])  # block scale 1
    w[0, 16] = 2688.0  # tensor amax = 6 · 448: tensor scale 1; this block's E4M3 scale is 448
    w[0, 32:34] = torch.tensor([3.0, 1.2])  # block scale 0.5: 2.4 -> 2 -> 1.0
    w[0, 48] = 5.0  # 5/6 rounds to 0.8125 in E4M3; 5/0.8125 = 6.15 saturates to 6 -> 4.875
    out = parse_candidate("nvfp4").quantize(w)[0]
    assert out[:8].tolist() == [6.0, 0.5, 1.0, 2.0, -4.0, 1.0, 0.0, 4.0]
    assert out[16].item() == 2688.0 and out[32:34].tolist() == [3.0, 1.0] and out[48].item() == 4.875
    assert parse_candidate("nvfp4").quantize(torch.zeros(3, 16)).abs().sum() == 0


def test_half_formats():
    assert q("fp16", [[1.0 + 2.0**-11, 1e6]]) == [[1.0, 65504.0]]  # ties to even; saturates
    assert q("bf16", [[1.0 + 2.0**-8]]) == [[1.0]]


@pytest.mark.parametrize(
    "name, bits_per_weight",
    [
        ("mxfp4", 4.25),
        ("mxfp6_e3m2", 6.25),
        ("mxfp6_e2m3", 6.25),
        ("mxfp8_e4m3", 8.25),
        ("mxfp8_e5m2", 8.25),
        ("nvfp4", 4.5 + 32 / 4096**2),
        ("int4_g128", 4.125),
        ("int4_asym_g128", 4.25),
        ("fp8_e4m3", 8 + 32 / 4096),
        ("fp4_e2m1_g32", 5.0),
        ("fp8_e5m2_tensor", 8 + 32 / 4096**2),
        ("fp16", 16.0),
        ("int4_g128_a8", 4.125),  # activation width changes no byte
    ],
)
def test_bits_per_weight_include_every_scale(name, bits_per_weight):
    assert parse_candidate(name).bits_per_weight([4096, 4096]) == bits_per_weight


def test_storage_bits_with_short_last_blocks():
    assert parse_candidate("nvfp4").storage_bits([3, 20]) == 60 * 4 + 6 * 8 + 32  # 2 blocks per row
    assert parse_candidate("mxfp4").storage_bits([8, 3, 3, 3]) == 216 * 4 + 8 * 8  # 27 per channel
    assert parse_candidate("fp6_e2m3_g4").storage_bits([2, 6]) == 12 * 6 + 4 * 32
    assert parse_candidate("fp8_e4m3").storage_bits([7]) == 7 * 8 + 32  # a vector is one channel


def test_activation_suffix_for_every_family():
    for base in ("int4", "int4_asym_g128", "fp8_e4m3", "fp4_e2m1_g32", "mxfp4", "mxfp8_e5m2", "nvfp4", "fp16"):
        pair = parse_candidate(f"{base}_a8")
        plain = parse_candidate(base)
        assert pair.name == f"{base}_a8" and pair.activation_bits == 8 and plain.activation_bits == 16
        assert pair.weight_bits == plain.weight_bits and pair.family == plain.family
        w = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
        assert torch.equal(pair.quantize(w), plain.quantize(w))
        assert pair.ladder != plain.ladder  # W4A8 is not on W4A16's ladder


@pytest.mark.parametrize(
    "name, message",
    [
        ("int4_a16", "write it as 'int4'"),
        ("int4_a1", "activation bits must be 2..16"),
        ("int4_a32", "activation bits must be 2..16"),
        ("fp8", "not a valid float format"),
        ("fp8_e3m2", "e3m2 is a 6-bit format"),
        ("fp4_e2m2", "unknown element format"),
        ("mxfp4_e2m1", "write it as 'mxfp4'"),
        ("mxfp4_e2m1_a8", "write it as 'mxfp4_a8'"),
        ("mxfp8", "not a valid MX format"),
        ("nvfp8", "not a valid NV format"),
        ("fp16_g32", "take no options"),
        ("fp4_e2m1_g0", "positive integer"),
        ("fp5", "not a valid float format"),
        ("q4", "unknown format; valid names"),
    ],
)
def test_invalid_float_names(name, message):
    with pytest.raises(ValueError, match="candidate") as info:
        parse_candidate(name)
    assert message in str(info.value)


def test_grammar_lists_every_family_and_the_activation_suffix():
    grammar = candidate_grammar()
    for piece in ("int<b>", "fp<w>_<eXmY>", "mxfp4", "nvfp4", "fp16 | bf16", "_a<bits>"):
        assert piece in grammar


def test_monotone_along_the_float_chain_only():
    cands = parse_candidates(["fp4_e2m1", "fp6_e3m2", "fp8_e4m3", "fp6_e2m3", "mxfp4", "mxfp8_e4m3"])
    raw = [1.0, 0.2, 0.5, 0.9, 2.0, 3.0]
    rows = [CandidateRow(c.name, d, d, 0, 0.0, 0.0) for c, d in zip(cands, raw, strict=True)]
    enforce_monotone(rows, cands)
    assert [r.damage for r in rows] == [1.0, 0.2, 0.2, 0.9, 2.0, 2.0]


@pytest.mark.parametrize("name", ["fp8_e4m3", "fp4_e2m1_g16", "mxfp6_e2m3", "nvfp4", "bf16"])
def test_error_shrinks_with_the_scale_and_input_is_untouched(name):
    w = torch.randn(8, 48, generator=torch.Generator().manual_seed(1))
    before = w.clone()
    cand = parse_candidate(name)
    out = cand.quantize(w)
    assert torch.equal(w, before) and out.shape == w.shape and out.dtype == torch.float32
    assert torch.allclose(cand.quantize(w * 4), out * 4)  # power-of-two rescaling commutes exactly
    assert float((out - w).abs().max()) <= 0.25 * float(w.abs().max())


def test_parsing_new_formats_needs_no_torch():
    code = (
        "import sys, workers.quantizers as q;"
        "[q.parse_candidate(n).bytes([4, 64]) for n in ('mxfp4', 'nvfp4_a8', 'fp8_e4m3_g32', 'fp16')];"
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert math.isfinite(parse_candidate("nvfp4").bits_per_weight([1, 16]))
