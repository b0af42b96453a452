import math
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.analysis import enforce_monotone
from workers.quantizers import DEFAULT_CANDIDATES, candidate_grammar, parse_candidate, parse_candidates
from workers.table import CandidateRow


def q(name, values):
    return parse_candidate(name).quantize(torch.tensor(values, dtype=torch.float32)).tolist()


def test_symmetric_per_channel_is_bit_exact():
    # row max 7 -> scale exactly 1 in FP16; halves round to even; each row has its own scale
    assert q("int4", [[7.0, -3.4, 0.5, 2.5], [14.0, 1.0, -3.0, 5.0]]) == [[7, -3, 0, 2], [14, 0, -4, 4]]
    # INT2 symmetric uses {-1, 0, 1} · max
    assert q("int2", [[-2.0, 0.9, 1.1, 0.0]]) == [[-2.0, 0.0, 2.0, 0.0]]


def test_scale_is_rounded_to_fp16():
    # max 1 / 7 is not an FP16 number: the stored scale is 0.142822265625, so 1.0 comes back short
    scale = float(torch.tensor(1 / 7).to(torch.float16))
    assert scale == 0.142822265625
    assert q("int4", [[1.0, -0.5]]) == [[7 * scale, -4 * scale]]


def test_asymmetric_is_bit_exact():
    # min -1, max 14 -> scale (14 + 1) / 15 = 1, offset -1
    assert q("int4_asym", [[-1.0, 0.2, 3.5, 14.0]]) == [[-1.0, 0.0, 3.0, 14.0]]
    # INT2 asymmetric: 4 levels from min to max
    assert q("int2_asym", [[0.0, 1.4, 1.6, 3.0]]) == [[0.0, 1.0, 2.0, 3.0]]


def test_per_tensor_shares_one_scale():
    assert q("int4_tensor", [[7.0, 1.4], [0.6, -2.5]]) == [[7.0, 1.0], [1.0, -2.0]]
    assert q("int4", [[7.0, 1.4], [0.6, -2.5]]) != [[7.0, 1.0], [1.0, -2.0]]


def test_group_wise_with_a_short_last_group():
    # groups of 2 along a row of 5: [7, 3.4] [0.75, -0.25] [0.5]; int2 keeps each group's max
    assert q("int2_g2", [[7.0, 3.4, 0.75, -0.25, 0.5]]) == [[7.0, 0.0, 0.75, 0.0, 0.5]]
    # the padding repeats the last value, so an asymmetric short group keeps its own min and max
    assert q("int2_asym_g4", [[0.0, 1.0, 2.0, 3.0, 5.0, 11.0]]) == [[0.0, 1.0, 2.0, 3.0, 5.0, 11.0]]


def test_conv_weight_groups_span_flattened_kernel():
    w = torch.randn(4, 3, 3, 3)
    out = parse_candidate("int8_g9").quantize(w)
    assert out.shape == w.shape and out.dtype == torch.float32
    for row, ref in zip(out.reshape(-1, 9), w.reshape(-1, 9), strict=True):
        scale = float(torch.tensor(float(ref.abs().max()) / 127).to(torch.float16))
        assert torch.allclose(row, torch.round(ref / scale) * scale)


def test_zero_and_tiny_weights_do_not_divide_by_zero():
    assert q("int4", [[0.0, 0.0]]) == [[0.0, 0.0]]
    assert q("int4_asym", [[3.0, 3.0]]) == [[3.0, 3.0]]
    assert all(math.isfinite(v) for v in q("int8", [[1e-30, -1e-30]])[0])


def test_input_left_untouched():
    w = torch.tensor([[0.3, -0.7]])
    before = w.clone()
    parse_candidate("int2").quantize(w)
    assert torch.equal(w, before)


@settings(max_examples=40, deadline=None)
@given(
    bits=st.integers(2, 8),
    rows=st.integers(1, 4),
    cols=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_symmetric_error_is_at_most_half_a_step(bits, rows, cols, seed):
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    out = parse_candidate(f"int{bits}").quantize(w)
    qmax = 2 ** (bits - 1) - 1
    step = (w.abs().amax(1, keepdim=True) / qmax).to(torch.float16).to(torch.float32)
    # FP16 rounding of the scale may push the row max a little past the grid: allow that much
    slack = (w.abs().amax(1, keepdim=True) - qmax * step).abs()
    assert bool(((out - w).abs() <= step / 2 + slack + 1e-6).all())
    assert len(torch.unique(torch.round(out / step))) <= 2 * qmax + 1


@pytest.mark.parametrize(
    "name, shape, bits",
    [
        ("int4", [10, 128], 1280 * 4 + 10 * 16),
        ("int3", [3, 5], 15 * 3 + 3 * 16),
        ("int8_tensor", [4, 4], 16 * 8 + 16),
        ("int4_g128", [256, 256], 65536 * 4 + 512 * 16),
        ("int4_asym_g128", [256, 256], 65536 * 4 + 512 * 32),
        ("int4_g32", [8, 3, 3, 3], 216 * 4 + 8 * 16),  # 27 weights per channel: one short group
        ("int2_asym_g4", [2, 6], 12 * 2 + 4 * 32),  # 2 groups per row, the second short
        ("int6", [7], 7 * 6 + 16),  # a vector is one channel
    ],
)
def test_storage_bits_are_exact(name, shape, bits):
    cand = parse_candidate(name)
    assert cand.storage_bits(shape) == bits
    assert cand.bytes(shape) == math.ceil(bits / 8)
    assert cand.bits_per_weight(shape) == bits / math.prod(shape)


def test_group_formats_match_the_textbook_overheads():
    assert parse_candidate("int4_g128").bits_per_weight([4096, 4096]) == 4.125
    assert parse_candidate("int4_asym_g128").bits_per_weight([4096, 4096]) == 4.25


@pytest.mark.parametrize("name", ["int4", "int2_asym", "int8_tensor", "int3_asym_tensor", "int4_g128", "int5_asym_g64"])
def test_canonical_names_round_trip(name):
    assert parse_candidate(name).name == name


@pytest.mark.parametrize("name", ["int9", "int1", "int4_g0", "int4_g", "int4_sym", "int4_tensor_asym", "fp8", "", "INT4"])
def test_invalid_names_raise_with_the_grammar(name):
    with pytest.raises(ValueError, match="candidate"):
        parse_candidate(name)


def test_unknown_name_lists_the_grammar():
    with pytest.raises(ValueError) as info:
        parse_candidate("nf4")
    assert "int<b>[_asym][_tensor|_g<size>]" in str(info.value)
    assert "int<b>" in candidate_grammar()


def test_candidate_lists():
    assert [c.name for c in parse_candidates(DEFAULT_CANDIDATES)] == ["int2", "int3", "int4", "int6", "int8"]
    with pytest.raises(ValueError, match="appears twice"):
        parse_candidates(["int4", "int4"])
    with pytest.raises(ValueError, match="at least one"):
        parse_candidates([])
    with pytest.raises(ValueError, match="list"):
        parse_candidates("int4")


def test_monotone_along_each_ladder_only():
    cands = parse_candidates(["int2", "int4", "int8", "int4_g32"])
    rows = [CandidateRow(c.name, d, d, 0, 0.0, 0.0) for c, d in zip(cands, [1.0, 0.2, 0.5, 0.9], strict=True)]
    enforce_monotone(rows, cands)
    assert [r.damage for r in rows] == [1.0, 0.2, 0.2, 0.9]  # int8 raised to int4's level; g32 alone
    assert [r.raw_damage for r in rows] == [1.0, 0.2, 0.5, 0.9]


def test_parsing_needs_no_torch():
    code = "import sys, workers.quantizers as q; q.parse_candidate('int4').bytes([4, 4]); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
