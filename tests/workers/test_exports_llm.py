"""Plans mixing INT, FP8, NVFP4, MXFP4 and GGUF candidates on a tiny GPT-2 and a tiny Llama with
tied embeddings, exported to every LLM target and read back with the target's own library: gguf's
tensor-name map, compressed-tensors' config classes (and its apply_quantization_config on the
model), GPTQModel `dynamic` rules as vLLM resolves them, safetensors + transformers for the
checkpoint. Every format a plan holds is exported or refused naming the layer."""

import json
import re

import pytest

from tests.utils.hf_factories import save_tiny
from workers.exports import ExportError, ExportPlan, get_exporter
from workers.exports._base import weight_settings

pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

KINDS = ["gpt2", "llama"]
# one of each family over the Linear layers, in order; the tied embedding gets its own
MIXED = ["int4_g128", "fp8_e4m3", "nvfp4", "mxfp4", "gguf_q4_k", "int8_a8", "gguf_q6_k"]
GGUF_ONLY = ["gguf_q4_k", "gguf_q5_k", "gguf_q3_k", "gguf_q6_k", "gguf_q8_0", "gguf_q2_k", "gguf_q4_0"]
INTEGERS = ["int4_g128", "int8", "int4", "int3_asym_g64", "int2_g32"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """kind -> (model source, table rows, loaded model); width 256 so k-quants take rows whole."""
    from workers.models import find_layers, load_model

    out = {}
    for kind in KINDS:
        source = {"format": "hf", "path": save_tiny(kind, tmp_path_factory.mktemp(kind), hidden=256)}
        model = load_model(source)
        out[kind] = (source, [info.to_dict() for info, _ in find_layers(model)], model)
    return out


def _plan(models, kind, cycle, embedding, **overrides):
    source, rows, _ = models[kind]
    linear = [r["name"] for r in rows if r["kind"] == "linear"]
    assignment = {name: cycle[i % len(cycle)] for i, name in enumerate(linear)}
    assignment[rows[0]["name"]] = embedding  # the tied token embedding (shared with lm_head)
    for name, candidate in overrides.items():
        assignment[name] = candidate
    return ExportPlan.from_table({"layers": rows}, {k: v for k, v in assignment.items() if v}, model=source)


def _names(plan):
    return [name for layer in plan.layers for name in (layer.name, *layer.shared_with)]


def test_the_tiny_models_tie_their_embeddings(models):
    for kind in KINDS:
        first = models[kind][1][0]
        assert first["kind"] == "embedding" and first["shared_with"] == ["lm_head"]


# ---------------------------------------------------------------------------------------- llama.cpp
@pytest.mark.parametrize("kind", KINDS)
def test_llamacpp_overrides_read_back_with_ggufs_name_map(models, kind):
    plan = _plan(models, kind, GGUF_ONLY, "gguf_q6_k", **({"transformer.wpe": "fp16"} if kind == "gpt2" else {}))
    exported = get_exporter("llamacpp").export(plan)
    body = json.loads(exported.content)
    assert body["architecture"] == kind and body["block_count"] == 2
    # the test's own mapping: gguf's TensorNameMap for the architecture, llama-quantize's matching
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[kind.upper()], 2)
    patterns = [(r["pattern"], r["type"]) for r in body["tensor_types"]]
    for layer in plan.layers:
        for module in (layer.name, *layer.shared_with):
            tensor = name_map.get_name(f"{module}.weight", try_suffixes=(".weight",))
            assert tensor is not None
            found = next((t for p, t in patterns if re.search(p, tensor)), None)
            if tensor == "position_embd.weight":  # llama-quantize never quantizes it
                assert found is None
                continue
            assert found == ("F16" if layer.candidate == "fp16" else weight_settings(layer.candidate)["ggml_type"])
            assert sum(bool(re.search(p, tensor)) for p, _ in patterns) == 1
    # the tie: token_embd and output carry one type
    types = {r["tensor"]: r["type"] for r in body["tensor_types"]}
    assert types["token_embd.weight"] == types["output.weight"] == "Q6_K"
    # the command: --pure, one --tensor-type per tensor, default = the type holding most weights
    held = {}
    for layer in plan.layers:
        if layer.candidate.startswith("gguf"):
            held[layer.candidate] = held.get(layer.candidate, 0) + layer.weight_shape[0] * layer.weight_shape[1]
    default = max(held, key=held.get)[5:].upper()
    args = body["command"].split()
    assert args[:2] == ["llama-quantize", "--pure"] and args[-3:] == ["model-f32.gguf", "model-bitplan.gguf", default]
    assert args.count("--tensor-type") == len(body["tensor_types"])
    assert get_exporter("llamacpp").read(exported.content, ["lm_head"]) == {
        "lm_head": {"tensor": "output.weight", "ggml_type": "Q6_K"}}
    # the --tensor-type-file form says the same
    text = get_exporter("llamacpp-types").export(plan)
    assert text.media_type == "text/plain" and text.content.decode() == body["tensor_type_file"]
    assert get_exporter("llamacpp-types").read(text.content, ["blk.1.ffn_down.weight", "nope.weight"]) == {
        "blk.1.ffn_down.weight": {"tensor": "blk.1.ffn_down.weight", "ggml_type": types["blk.1.ffn_down.weight"]},
        "nope.weight": None}


@pytest.mark.parametrize("kind", KINDS)
def test_llamacpp_refuses_formats_without_a_ggml_type(models, kind):
    plan = _plan(models, kind, MIXED, "gguf_q6_k")
    first_linear = next(layer for layer in plan.layers if layer.kind == "linear")
    with pytest.raises(ExportError, match=rf"layer '{re.escape(first_linear.name)}' is int4_g128 \(INT4 in groups of 128\)"):
        get_exporter("llamacpp").export(plan)
    if kind == "gpt2":  # position embeddings stay as converted (F32), and the export says what that costs
        wpe = _plan(models, kind, GGUF_ONLY, "gguf_q6_k", **{"transformer.wpe": "gguf_q8_0"})
        exported = get_exporter("llamacpp").export(wpe)
        assert "position_embd" not in exported.content.decode()
        grown = 4 * 64 * 256 - 64 * 256 // 32 * 34
        assert [w for w in exported.warnings if "transformer.wpe" in w and f"{grown} bytes larger" in w]
    with pytest.raises(ExportError, match="needs a Hugging Face model directory"):
        get_exporter("llamacpp").export(ExportPlan(plan.layers, model={"format": "safetensors", "path": "x"}))


def test_llamacpp_writes_the_fallback_type_it_measured(models):
    source, rows, _ = models["llama"]
    narrow = [dict(r, weight_shape=[r["weight_shape"][0], 96]) if r["name"].endswith("q_proj") else r for r in rows]
    plan = ExportPlan.from_table({"layers": narrow}, {r["name"]: "gguf_q4_k" for r in rows}, model=source)
    exported = get_exporter("llamacpp").export(plan)
    types = {r["tensor"]: r["type"] for r in json.loads(exported.content)["tensor_types"]}
    assert types["blk.0.attn_q.weight"] == "Q5_0" and types["blk.0.attn_k.weight"] == "Q4_K"
    assert [w for w in exported.warnings if "2 layer(s)" in w and "writes Q5_0 there, not Q4_K" in w]


# ------------------------------------------------------------------------ llm-compressor / compressed-tensors
@pytest.mark.parametrize("kind", KINDS)
def test_llmcompressor_holds_int_fp8_nvfp4_mxfp4_validated_by_compressed_tensors(models, kind):
    from compressed_tensors.quantization import QuantizationConfig

    mixed = _plan(models, kind, MIXED, "int8")
    gguf_layer = next(layer for layer in mixed.layers if layer.candidate == "gguf_q4_k")
    with pytest.raises(ExportError, match=rf"layer '{re.escape(gguf_layer.name)}' is gguf_q4_k \(GGML Q4_K"):
        get_exporter("llmcompressor").export(mixed)
    plan = _plan(models, kind, [c for c in MIXED if not c.startswith("gguf")], "int8")
    exported = get_exporter("llmcompressor").export(plan)
    body = json.loads(exported.content)
    config = QuantizationConfig.model_validate(body)  # compressed-tensors' own classes
    assert body["format"] == "mixed-precision"
    assert {g.format for g in config.config_groups.values()} == {
        "pack-quantized", "float-quantized", "nvfp4-pack-quantized", "mxfp4-pack-quantized", "int-quantized"}
    embedding = plan.layers[0]
    assert set(config.ignore) >= {embedding.name, "lm_head"}
    assert any(embedding.name in w and "stays 16-bit" in w for w in exported.warnings)
    back = get_exporter("llmcompressor").read(exported.content, _names(plan))
    expect = {
        "int4_g128": {"bits": 4, "type": "int", "strategy": "group", "group_size": 128, "scale_dtype": None},
        "fp8_e4m3": {"bits": 8, "type": "float", "strategy": "channel", "group_size": None, "scale_dtype": None},
        "nvfp4": {"bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16,
                  "scale_dtype": "torch.float8_e4m3fn"},
        "mxfp4": {"bits": 4, "type": "float", "strategy": "group", "group_size": 32, "scale_dtype": "torch.uint8"},
        "int8_a8": {"bits": 8, "type": "int", "strategy": "channel", "group_size": None, "scale_dtype": None},
    }
    for layer in plan.layers:
        got = back[layer.name]
        if layer.kind != "linear" or layer.candidate is None:
            assert got is None
            continue
        assert {k: got[k] for k in expect[layer.candidate]} == expect[layer.candidate], layer.name
        assert got["activation_bits"] == (8 if layer.candidate == "int8_a8" else None)


def test_compressed_tensors_applies_the_config_to_the_llama_modules(models):
    import copy

    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config

    plan = _plan(models, "llama", [c for c in MIXED if not c.startswith("gguf")], None)
    body = json.loads(get_exporter("llmcompressor").export(plan).content)
    model = copy.deepcopy(models["llama"][2])
    apply_quantization_config(model, QuantizationConfig.model_validate(body))
    modules = dict(model.named_modules())
    for layer in plan.layers:
        scheme = getattr(modules[layer.name], "quantization_scheme", None)
        if layer.candidate is None:
            assert scheme is None
        else:
            want = weight_settings(layer.candidate)
            assert (scheme.weights.num_bits, scheme.weights.strategy) == (want["bits"], want["strategy"]), layer.name


def test_llmcompressor_refuses_what_compressed_tensors_cannot_say(models):
    for candidate, why in [("fp8_e5m2", "FP8 E4M3 only"), ("mxfp6_e3m2", "MXFP6 \\(E2M3\\)"),
                           ("fp4_e2m1_g32", "FP8 E4M3 only"), ("mxfp4_a8", "activation scheme")]:
        plan = _plan(models, "llama", [candidate], None)
        with pytest.raises(ExportError, match=rf"layer 'model\.layers\.0\.self_attn\.q_proj' is {candidate} .*{why}"):
            get_exporter("llmcompressor").export(plan)


# --------------------------------------------------------------------------------------- GPTQModel
@pytest.mark.parametrize("kind", KINDS)
def test_gptqmodel_excludes_the_embedding_and_says_so(models, kind):
    plan = _plan(models, kind, INTEGERS, "int4")
    exported = get_exporter("gptqmodel").export(plan)
    embedding = plan.layers[0]
    assert [w for w in exported.warnings if embedding.name in w and "stays 16-bit" in w]
    body = json.loads(exported.content)
    assert f"-:^{re.escape(embedding.name)}$" in body["dynamic"] and "-:^lm_head$" in body["dynamic"]
    back = get_exporter("gptqmodel").read(exported.content, _names(plan))  # vLLM's resolution of the rules
    for layer in plan.layers:
        want = None if layer.kind != "linear" else weight_settings(layer.candidate)
        got = back[layer.name]
        if want is None:
            assert got is None
        else:
            assert (got["bits"], got["symmetric"], got["group_size"]) == (
                want["bits"], want["symmetric"], want["group_size"]), layer.name
    assert back["lm_head"] is None  # tied to the embedding, which stays 16-bit
    with pytest.raises(ExportError, match=r"is fp8_e4m3 \(FP8 e4m3 per channel\); gptqmodel stores integer weights"):
        get_exporter("gptqmodel").export(_plan(models, kind, ["int4", "fp8_e4m3"], "int4"))
    with pytest.raises(ExportError, match="no activation quantization"):
        get_exporter("gptqmodel").export(_plan(models, kind, ["int8_a8"], None))


# --------------------------------------------------------------------------- fake-quantized checkpoint
@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_stores_a_tied_weight_once_and_keeps_the_tie(models, kind):
    import copy

    import torch
    import transformers as tf
    from safetensors.torch import load

    from workers.models import find_layers
    from workers.quantizers import parse_candidate

    plan = _plan(models, kind, MIXED, "gguf_q6_k")  # every family, the tied embedding in GGUF Q6_K
    exported = get_exporter("safetensors").export(plan)
    state = load(exported.content)
    header = json.loads(exported.content[8 : 8 + int.from_bytes(exported.content[:8], "little")])
    tied = json.loads(header["__metadata__"]["bitplan_tied"])
    embedding = plan.layers[0].name
    assert tied == {"lm_head.weight": f"{embedding}.weight"} and "lm_head.weight" not in state
    float_model = models[kind][2]
    for info, weight in find_layers(float_model):
        candidate = plan.assignment.get(info.name)
        stored = state[f"{info.name}.weight"]
        want = weight.detach() if candidate is None else info.quantize(parse_candidate(candidate), weight)
        assert torch.equal(stored, want), info.name
    # transformers loads it back tied: the LM head is the quantized embedding
    fresh = (tf.GPT2LMHeadModel if kind == "gpt2" else tf.LlamaForCausalLM)(copy.deepcopy(float_model.config))
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    assert unexpected == [] and set(missing) <= {"lm_head.weight"}
    fresh.tie_weights()
    assert torch.equal(fresh.lm_head.weight, state[f"{embedding}.weight"])
    back = get_exporter("safetensors").read(exported.content, _names(plan))
    assert back[embedding] == weight_settings("gguf_q6_k") and back["lm_head"] is None


def test_llamacpp_export_runs_without_torch(tmp_path):
    """The API process answers config exports itself and never imports torch."""
    import subprocess
    import sys

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mistral", "num_hidden_layers": 1}))
    code = (
        "import json, sys\n"
        "from workers.exports import ExportPlan, get_exporter\n"
        "rows = [{'name': 'model.layers.0.mlp.down_proj', 'kind': 'linear', 'weight_shape': [64, 512]}]\n"
        f"plan = ExportPlan.from_table({{'layers': rows}}, {{rows[0]['name']: 'gguf_q5_k'}}, model={{'format': 'hf',"
        f" 'path': {str(tmp_path)!r}}})\n"
        "body = json.loads(get_exporter('llamacpp').export(plan).content)\n"
        "assert body['architecture'] == 'llama' and body['tensor_types'][0]['tensor'] == 'blk.0.ffn_down.weight'\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------- every format × every target
FORMATS = ["int4", "int4_asym_g128", "int8_tensor", "int5", "fp8_e4m3", "fp8_e5m2", "fp6_e3m2", "fp4_e2m1_g32",
           "mxfp4", "mxfp6_e2m3", "mxfp8_e5m2", "nvfp4", "fp16", "bf16", "gguf_q4_k", "gguf_mxfp4", "int8_a8",
           "nvfp4_a4"]
HOLDS = {  # what README's export table says each target holds; everything else is refused
    "json": set(FORMATS),
    "safetensors": set(FORMATS),
    "llamacpp": {"fp16", "bf16", "gguf_q4_k", "gguf_mxfp4"},
    "llamacpp-types": {"fp16", "bf16", "gguf_q4_k", "gguf_mxfp4"},
    "llmcompressor": {"int4", "int4_asym_g128", "int8_tensor", "int5", "fp8_e4m3", "mxfp4", "mxfp6_e2m3", "nvfp4",
                      "fp16", "bf16", "int8_a8", "nvfp4_a4"},
    "gptqmodel": {"int4", "int4_asym_g128", "fp16", "bf16"},
    "nncf": {"int4", "int5", "fp16", "bf16"},
    "hawq": {"int4", "int4_asym_g128", "int8_tensor", "int5", "fp16", "bf16"},
}
LAYER = "model.layers.0.self_attn.q_proj"


@pytest.mark.parametrize("target", list(HOLDS))
def test_every_format_is_exported_or_refused_naming_the_layer(models, target):
    source, rows, _ = models["llama"]
    anchor = "gguf_q4_k" if target.startswith("llamacpp") else "int4"
    for candidate in FORMATS:
        assignment = {"model.layers.1.mlp.down_proj": anchor, LAYER: candidate}
        plan = ExportPlan.from_table({"layers": rows}, assignment, model=source)
        exporter = get_exporter(target)
        if candidate not in HOLDS[target]:
            with pytest.raises(ExportError, match=rf"{re.escape(LAYER)}'? \(?.*{candidate}"):
                exporter.export(plan)
            continue
        exported = exporter.export(plan)
        if target == "llamacpp-types":
            names = [gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2).get_name(f"{LAYER}.weight", (".weight",))]
            got = exporter.read(exported.content, names)[names[0]]
        else:
            got = exporter.read(exported.content, [LAYER])[LAYER]
        want = weight_settings(candidate)
        if target.startswith("llamacpp"):
            assert got["ggml_type"] == want.get("ggml_type", {"fp16": "F16", "bf16": "BF16"}.get(candidate)), candidate
        elif candidate in ("fp16", "bf16") and target not in ("json", "safetensors"):
            assert got is None, (target, candidate)  # kept 16-bit: not quantized
        else:
            assert got["bits"] == want["bits"], (target, candidate)


def test_gguf_round_trip_runs_along_the_rows_llama_cpp_stores(models):
    """GPT-2's Conv1D stores (in, out); convert_hf_to_gguf.py writes it transposed, (out, in), so GGML
    blocks run along the input dimension: bitplan's measured round trip must be that one."""
    import torch

    from workers.models import find_layers
    from workers.quantizers import parse_candidate
    from workers.quantizers._gguf import round_trip

    info, weight = next((i, w) for i, w in find_layers(models["gpt2"][2]) if i.name.endswith("h.0.attn.c_attn"))
    assert info.transposed and tuple(weight.shape) == (256, 768)
    as_converted = weight.detach().t().contiguous()  # what the GGUF file holds, rows of 256 inputs
    want = torch.from_numpy(round_trip(as_converted.numpy().reshape(-1), "Q4_K")).reshape(768, 256)
    assert torch.equal(info.quantize(parse_candidate("gguf_q4_k"), weight), want.t())
