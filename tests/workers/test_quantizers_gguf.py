"""GGUF candidates: ggml's bytes, gguf's dequantize, llama-quantize's sizes and shape fallbacks."""

import pytest
import torch

from tests.utils.ggml_reference import DIGESTS, SIZES, digest, reference_inputs
from workers.quantizers import parse_candidate, parse_candidates

gguf = pytest.importorskip("gguf")

from workers.quantizers._gguf import TYPES, round_trip  # noqa: E402
from workers.quantizers._kquants import QUANTIZE  # noqa: E402

# domain facts: bits per weight of GGML block formats, scales included
BPW = {"q2_k": 2.625, "q3_k": 3.4375, "q4_k": 4.5, "q5_k": 5.5, "q6_k": 6.5625, "q8_0": 8.5,
       "q4_0": 4.5, "q4_1": 5.0, "q5_0": 5.5, "q5_1": 6.0, "mxfp4": 4.25}


@pytest.mark.parametrize("ggml_type", list(SIZES))
def test_bytes_equal_ggml_reference_quantizers(ggml_type):
    """k-quants: our port; the others: gguf's own quantize. Both must write ggml's C bytes."""
    qtype = gguf.GGMLQuantizationType[ggml_type]
    for kind, x in reference_inputs().items():
        data = QUANTIZE[ggml_type](x) if ggml_type in QUANTIZE else gguf.quants.quantize(x, qtype)
        assert digest(data) == DIGESTS[(ggml_type, kind)], (ggml_type, kind)


def test_sizes_and_bits_per_weight_are_llama_cpps():
    for ggml_type, (block, size, _, _) in TYPES.items():
        assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[ggml_type]] == (block, size)
    for suffix, bpw in BPW.items():
        q = parse_candidate(f"gguf_{suffix}")
        assert q.bits_per_weight([4096, 4096]) == bpw
        assert q.bytes([64, 512]) == 64 * 512 * bpw / 8


def test_round_trip_is_ggufs_dequantize_of_the_stored_bytes():
    torch.manual_seed(0)
    w = torch.randn(8, 512)
    for name in ("gguf_q4_k", "gguf_q6_k", "gguf_q5_0"):
        q = parse_candidate(name)
        out = q.quantize(w)
        qtype = gguf.GGMLQuantizationType[q.ggml_type]
        x = w.numpy().reshape(-1, TYPES[q.ggml_type][0])
        data = QUANTIZE[q.ggml_type](x) if q.ggml_type in QUANTIZE else gguf.quants.quantize(x, qtype)
        assert torch.equal(out, torch.from_numpy(gguf.quants.dequantize(data, qtype)).reshape(8, 512))
        assert out.dtype == torch.float32 and not torch.equal(out, w)


def test_error_falls_along_the_k_ladder():
    torch.manual_seed(1)
    w = torch.randn(16, 1024) * 0.02
    names = ["gguf_q2_k", "gguf_q3_k", "gguf_q4_k", "gguf_q5_k", "gguf_q6_k", "gguf_q8_0"]
    errors = [float((parse_candidate(n).quantize(w) - w).pow(2).sum()) for n in names]
    assert errors == sorted(errors, reverse=True) and errors[-1] > 0
    assert {parse_candidate(n).ladder for n in names} == {"gguf_k"}


def test_rows_not_a_multiple_fall_back_as_llama_quantize_does():
    w = torch.randn(4, 96)  # 96: a multiple of 32, not of 256
    for name, stored in [("gguf_q4_k", "Q5_0"), ("gguf_q6_k", "Q8_0"), ("gguf_q2_k", "Q4_0"), ("gguf_q5_k", "Q5_1")]:
        q = parse_candidate(name)
        assert q.bytes(w.shape) == 4 * 96 // 32 * TYPES[stored][1]
        want = torch.from_numpy(round_trip(w.numpy().reshape(-1), stored)).reshape(4, 96)
        assert torch.equal(q.quantize(w), want)
    odd = torch.randn(3, 40)  # not a multiple of 32 either: F16
    assert parse_candidate("gguf_q4_k").bytes(odd.shape) == 3 * 40 * 2
    assert torch.equal(parse_candidate("gguf_q4_k").quantize(odd), odd.to(torch.float16).to(torch.float32))
    with pytest.raises(ValueError, match="no fallback type for Q4_0"):
        parse_candidate("gguf_q4_0").quantize(odd)
    with pytest.raises(ValueError, match="rows of 40 weights"):
        parse_candidate("gguf_q8_0").bytes(odd.shape)


def test_names_and_grammar():
    assert [q.name for q in parse_candidates(["gguf_q4_k", "gguf_mxfp4"])] == ["gguf_q4_k", "gguf_mxfp4"]
    with pytest.raises(ValueError, match="not a GGUF type"):
        parse_candidate("gguf_q4_k_m")  # a llama-quantize mixture, not a tensor type
    with pytest.raises(ValueError, match="not a GGUF type"):
        parse_candidate("gguf_Q4_K")
    assert parse_candidate("gguf_q4_k_a8").activation_bits == 8


def test_chunked_passes_give_the_same_bytes(monkeypatch):
    import workers.quantizers._gguf as g

    torch.manual_seed(2)
    w = torch.randn(7, 768)
    whole = {n: parse_candidate(n).quantize(w) for n in ("gguf_q3_k", "gguf_q8_0")}
    monkeypatch.setattr(g, "_CHUNK", 2)
    for name, want in whole.items():
        assert torch.equal(parse_candidate(name).quantize(w), want)


def test_ggml_mxfp4_rounds_ties_toward_zero_unlike_ocp_mx():
    """Why gguf_mxfp4 is its own candidate: ggml's best_index_mxfp4 takes the first (smaller) of two
    equally near E2M1 values; OCP MX (bitplan's mxfp4) rounds ties to even."""
    w = torch.tensor([[6.0, 0.75, 1.75, 2.5, 3.5, 5.0, -0.75] + [0.0] * 25])
    assert parse_candidate("gguf_mxfp4").quantize(w)[0, :7].tolist() == [6.0, 0.5, 1.5, 2.0, 3.0, 4.0, -0.5]
    assert parse_candidate("mxfp4").quantize(w)[0, :7].tolist() == [6.0, 1.0, 2.0, 2.0, 4.0, 4.0, -1.0]
