"""HF Conv1D stores weights as (in, out): every path that fake-quantizes must round per *output* channel."""

from __future__ import annotations

import pytest
import torch

from tests.utils.hf_factories import save_tiny

pytest.importorskip("transformers")


def test_plan_application_rounds_per_output_channel(tmp_path):
    from workers.evaluation import apply_plan
    from workers.models import find_layers, load_model
    from workers.quantizers import parse_candidate

    model = load_model({"format": "hf", "path": save_tiny("gpt2", tmp_path / "gpt2")})
    layers = find_layers(model)
    info, weight = next((i, w) for i, w in layers if i.transposed)
    assert list(weight.shape) == info.weight_shape[::-1]  # stored (in, out)
    quantized = apply_plan(model, {info.name: "int4"})
    got = next(w for i, w in find_layers(quantized) if i.name == info.name).detach()
    per_output = parse_candidate("int4").quantize(weight.detach().t()).t()
    per_input = parse_candidate("int4").quantize(weight.detach())
    assert torch.equal(got, per_output)
    assert not torch.equal(got, per_input)
