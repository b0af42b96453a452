"""MACs from the traced pass, BOPs, roofline and user-table latencies, against hand computations."""

import pytest
import torch
from torch import nn

from workers.costs import PROFILES, HardwareProfile, parse_hardware, parse_latency_table, roofline_ms, trace_layers
from workers.models import find_layers
from workers.quantizers import parse_candidate


class ConvNet(nn.Module):
    """conv (grouped, strided) -> conv1d over rows -> linear used twice -> tied embedding head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 6, kernel_size=3, stride=2, padding=1, groups=2)  # 8x8 -> 4x4
        self.conv1d = nn.Conv1d(6, 5, kernel_size=2)  # length 16 -> 15
        self.fc = nn.Linear(15, 15)
        self.head = nn.Linear(5 * 15, 7, bias=False)

    def forward(self, x):
        y = self.conv(x)  # (1, 6, 4, 4)
        y = self.conv1d(y.flatten(2))  # (1, 5, 15)
        y = self.fc(self.fc(y))  # called twice
        return self.head(y.flatten(1))


def test_macs_match_hand_computation():
    model = ConvNet().eval()
    layers = find_layers(model)
    trace = trace_layers(model, layers, torch.randn(1, 4, 8, 8))
    t = trace.layers
    assert t["conv"].macs == (6 * 4 * 4) * (4 // 2) * 3 * 3  # out elements × in/groups × kernel area
    assert t["conv1d"].macs == (5 * 15) * 6 * 2
    assert t["fc"].macs == 2 * (5 * 15) * 15 and t["fc"].calls == 2
    assert t["head"].macs == 7 * 75
    assert t["conv"].input_elements == 4 * 64 and t["conv"].output_elements == 96
    assert trace.sample_shape == [1, 4, 8, 8]


def test_bops_are_macs_times_weight_and_activation_bits():
    from workers.costs import bops

    assert bops(1000, parse_candidate("int4")) == 1000 * 4 * 16
    assert bops(1000, parse_candidate("int4_a8")) == 1000 * 4 * 8
    assert bops(1000, parse_candidate("mxfp4_a4")) == 1000 * 4 * 4
    assert bops(1000, parse_candidate("fp16")) == 1000 * 16 * 16


def test_tied_embedding_gets_the_heads_macs_and_shared_inputs_are_found():
    class TinyLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(11, 8)
            self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 4), nn.Linear(8, 4)
            self.out = nn.Linear(8, 11, bias=False)
            self.out.weight = self.embed.weight

        def forward(self, ids):
            h = self.embed(ids)
            h = h + self.q(h) + torch.cat([self.k(h), self.v(h)], dim=-1)
            return self.out(h)

    model = TinyLM().eval()
    layers = find_layers(model)
    assert [i.name for i, _ in layers] == ["embed", "q", "k", "v"]
    assert layers[0][0].shared_with == ("out",)
    trace = trace_layers(model, layers, torch.tensor([[1, 2, 3]]))
    assert trace.layers["embed"].macs == 3 * 11 * 8  # the LM head's use of the same weight
    assert trace.shared_inputs == [["q", "k", "v"]]


def test_roofline_hand_computation_and_monotone_in_bits():
    from workers.costs import LayerTrace
    from workers.models import LayerInfo

    info = LayerInfo("fc", "linear", [4096, 4096], 4096 * 4096)
    trace = LayerTrace(macs=4096 * 4096, input_elements=4096, output_elements=4096, calls=1)
    t4 = PROFILES["t4"]
    int8_a8 = parse_candidate("int8_a8")
    # memory: weight 4096·4096 B + 4096·(2 B FP16 scale) ... exact: storage bits / 8
    weight_bytes = int8_a8.storage_bits([4096, 4096]) / 8
    memory = (weight_bytes + 8192 * 1) / 320e9
    compute = 2 * 4096 * 4096 / 130e12
    assert roofline_ms(trace, info, int8_a8, t4) == pytest.approx(1e3 * max(memory, compute))
    names = ["int2", "int3", "int4", "int6", "int8", "fp16"]
    for profile in PROFILES.values():
        ms = [roofline_ms(trace, info, parse_candidate(n), profile) for n in names]
        assert ms == sorted(ms) and ms[0] < ms[-1]
    # compute-bound case: a big batch makes compute dominate; W4A4 runs the INT4 rate on a T4
    big = LayerTrace(macs=4096 * 4096 * 4096, input_elements=4096 * 4096, output_elements=4096 * 4096)
    w4a4 = roofline_ms(big, info, parse_candidate("int4_a4"), t4)
    assert w4a4 == pytest.approx(1e3 * 2 * 4096**3 / 260e12)
    # H100 has no INT4 rate: W4A4 runs at the 8-bit rate
    assert PROFILES["h100"].peak_for(4) == PROFILES["h100"].peak_for(8) == 1979e12


def test_every_builtin_profile_names_its_source():
    for profile in PROFILES.values():
        assert "datasheet" in profile.source and profile.bandwidth > 0 and 16 in profile.peak_ops


def test_parse_hardware():
    assert parse_hardware("a100") is PROFILES["a100"]
    custom = parse_hardware({"name": "npu", "peak_ops": {"8": 1e12, "16": 5e11}, "bandwidth": 1e10})
    assert custom == HardwareProfile("npu", {8: 1e12, 16: 5e11}, 1e10)
    assert custom.peak_for(4) == 1e12 and custom.peak_for(16) == 5e11
    for bad, pattern in [("v100", "unknown profile"), ({"peak_ops": {}, "bandwidth": 1}, "peak_ops"),
                         ({"peak_ops": {"x": 1}, "bandwidth": 1}, "peak_ops"), ({"peak_ops": {"8": 1}}, "bandwidth"),
                         ({"peak_ops": {"8": 1}, "bandwidth": 1, "colour": 1}, "colour")]:
        with pytest.raises(ValueError, match=f"^options.hardware.*{pattern}"):
            parse_hardware(bad)


def test_parse_latency_table():
    table = parse_latency_table({"a": {"int4": 0.5, "int8": 1}, "b": {"int4": 0.25, "int8": 0.5}}, ["a", "b"], ["int4", "int8"])
    assert table[("a", "int8")] == 1.0 and len(table) == 4
    with pytest.raises(ValueError, match="layer 'b' missing"):
        parse_latency_table({"a": {"int4": 1, "int8": 1}}, ["a", "b"], ["int4", "int8"])
    with pytest.raises(ValueError, match="candidate 'int8'"):
        parse_latency_table({"a": {"int4": 1}}, ["a"], ["int4", "int8"])
    with pytest.raises(ValueError, match="unknown layer 'c'"):
        parse_latency_table({"a": {"int4": 1}, "c": {}}, ["a"], ["int4"])
