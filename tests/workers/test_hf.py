"""Hugging Face directories: tiny GPT-2 / Llama / BERT built offline, loaded, inventoried, tied, analysed."""

import json
import math

import pytest
import torch

pytest.importorskip("transformers")

from tests.utils.hf_factories import save_tiny, write_jsonl  # noqa: E402
from workers.costs import trace_layers  # noqa: E402
from workers.errors import ModelLoadError  # noqa: E402
from workers.jobs import inspect_model_job, run_analysis_job  # noqa: E402
from workers.models import find_layers, load_model  # noqa: E402
from workers.quantizers import parse_candidate  # noqa: E402
from workers.table import SensitivityTable  # noqa: E402


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {kind: save_tiny(kind, root / kind) for kind in ("gpt2", "llama", "bert")}


def hf(path):
    return {"format": "hf", "path": path}


def test_gpt2_inventory_counts_conv1d_as_linear_in_output_orientation(dirs):
    rows = {r["name"]: r for r in inspect_model_job(hf(dirs["gpt2"]))}
    assert rows["transformer.wte"]["shared_with"] == ["lm_head"] and "lm_head" not in rows
    c_attn = rows["transformer.h.0.attn.c_attn"]
    assert c_attn["kind"] == "linear" and c_attn["weight_shape"] == [48, 16] and c_attn["transposed"] is True
    assert rows["transformer.h.1.mlp.c_proj"]["weight_shape"] == [16, 64]
    model = load_model(hf(dirs["gpt2"]))
    info, weight = next((i, w) for i, w in find_layers(model) if i.name == "transformer.h.0.mlp.c_fc")
    assert tuple(weight.shape) == (16, 64)  # Conv1D stores (in, out)
    int4 = parse_candidate("int4")
    assert torch.equal(info.quantize(int4, weight), int4.quantize(weight.detach().t()).t())
    assert int4.bytes(info.weight_shape) == 64 * 16 // 2 + 64 * 2  # one FP16 scale per output channel


def test_ties_found_from_shared_inputs(dirs):
    sample = torch.tensor([[4, 5, 6, 7, 8]])
    found = {}
    for kind in ("gpt2", "llama", "bert"):
        model = load_model(hf(dirs[kind]))
        found[kind] = trace_layers(model, find_layers(model), sample).shared_inputs
    assert found["gpt2"] == []  # c_attn is already one fused weight
    assert found["llama"][:2] == [
        ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj"],
        ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"],
    ] and len(found["llama"]) == 4
    prefix = "bert.encoder.layer.1.attention.self."
    assert found["bert"][1] == [prefix + "query", prefix + "key", prefix + "value"] and len(found["bert"]) == 2


def test_tied_embedding_is_one_unit_with_the_heads_macs(dirs):
    model = load_model(hf(dirs["llama"]))
    layers = find_layers(model)
    embed = layers[0][0]
    assert embed.name == "model.embed_tokens" and embed.shared_with == ("lm_head",)
    trace = trace_layers(model, layers, torch.tensor([[4, 5, 6, 7, 8, 9]]))
    assert trace.layers["model.embed_tokens"].macs == 6 * 35 * 16  # lm_head over all 6 positions
    assert trace.layers["model.layers.0.mlp.down_proj"].macs == 6 * 32 * 16


def test_llama_analysis_on_text_calibration(dirs, tmp_path):
    text = write_jsonl(tmp_path / "calib.jsonl")
    out = run_analysis_job({
        "model": hf(dirs["llama"]), "dataset_path": text, "candidates": ["int4", "int8_a8", "mxfp4", "fp16"],
        "metric": "hutchinson", "seed": 1,
        "options": {"max_samples": 3, "max_length": 12, "batch_size": 2, "hardware": "t4", "device": "cpu",
                    "min_probes": 2, "max_probes": 4, "probe_batch": 2},
    })
    assert json.loads(json.dumps(out)) == out
    # next-token targets, but a language model's default loss is label-free (PSD Gauss-Newton Hessian)
    assert out["loss"] == "kl_label_free" and out["calibration_samples"] == 3
    calib = out["provenance"]["calibration"]
    assert calib["format"] == "jsonl" and calib["sequence_length"] == 12 and calib["tokens"] == 36
    assert calib["targets"] == "next_token" and calib["truncated"] is True
    assert out["provenance"]["seed"] == 1 and out["provenance"]["device"] == "cpu"
    assert out["provenance"]["latency"]["hardware"]["name"] == "t4"
    table = SensitivityTable.from_dict(out)
    q = table.layer("model.layers.0.self_attn.q_proj")
    assert q.macs == 12 * 16 * 16 and q.candidate("int8_a8").bops == q.macs * 8 * 8
    assert q.candidate("int4").latency_ms < q.candidate("fp16").latency_ms
    problem = table.to_problem()
    assert set(problem.cost_names) == {"bytes", "bops", "latency_ms"}
    assert ("model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj") in problem.ties
    blocks = run_analysis_job({
        "model": hf(dirs["llama"]), "dataset_path": text, "candidates": ["int4", "int8"], "seed": 1,
        "metric": "hutchinson", "options": {"max_samples": 2, "max_length": 8, "grouping": "block", "ties": "none",
                    "min_probes": 2, "max_probes": 2, "probe_batch": 2},
    })
    units = [u.name for u in SensitivityTable.from_dict(blocks).to_problem().units]
    assert units == ["model.embed_tokens", "model.layers.0", "model.layers.1"] and blocks["ties"] == []


def test_bert_text_calibration_is_label_free(dirs, tmp_path):
    lines = tmp_path / "calib.txt"
    lines.write_text("the quick brown fox\n\nquantization maps weights to a grid\n" * 3)
    out = run_analysis_job({
        "model": hf(dirs["bert"]), "dataset_path": str(lines), "candidates": ["int8", "nvfp4"],
        "metric": "hutchinson", "options": {"max_samples": 2, "max_length": 6, "min_probes": 2, "max_probes": 2, "probe_batch": 2},
    })
    assert out["loss"] == "kl_label_free" and out["provenance"]["calibration"]["format"] == "text"
    assert len(out["ties"]) == 2 and all(math.isfinite(layer["mean"]) for layer in out["layers"])


def test_bad_directories(tmp_path, dirs):
    with pytest.raises(ModelLoadError, match="no such directory"):
        load_model(hf(str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(hf(str(tmp_path / "empty")))
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="no \\*.safetensors"):
        load_model(hf(str(tmp_path / "empty")))
    with pytest.raises(ValueError, match="model.architecture"):
        load_model({"format": "hf", "path": dirs["gpt2"], "architecture": "mlp"})


def test_text_windows_default_to_128_tokens_not_the_whole_context(tmp_path):
    """A long-context model (8192 positions for SmolLM2) still gets the default 128-token windows
    when the request names no max_length; the context length only caps an explicit one."""
    path = save_tiny("llama", tmp_path / "long")
    config = json.loads((tmp_path / "long" / "config.json").read_text())
    config["max_position_embeddings"] = 1024
    (tmp_path / "long" / "config.json").write_text(json.dumps(config))
    text = write_jsonl(tmp_path / "calib.jsonl", repeat=60)
    out = run_analysis_job({"model": hf(path), "dataset_path": text, "candidates": ["int4"], "metric": "mse",
                            "options": {"max_samples": 2}})
    assert out["provenance"]["calibration"]["sequence_length"] == 128
    capped = run_analysis_job({"model": hf(path), "dataset_path": text, "candidates": ["int4"], "metric": "mse",
                               "options": {"max_samples": 1, "max_length": 4096}})
    assert capped["provenance"]["calibration"]["sequence_length"] <= 1024
