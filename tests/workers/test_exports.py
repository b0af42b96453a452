"""Every export format, written and read back (conformance suite over the registry)."""

import json

import pytest

from tests.utils.workers_factories import MLP, save_model, trained_mlp
from workers.exports import ExportError, ExportPlan, exporter_names, exporters, get_exporter
from workers.exports._base import weight_settings
from workers.exports._configs import LlmCompressor

LAYERS = [
    {"name": "fc1", "kind": "linear", "weight_shape": [8, 6]},
    {"name": "fc2", "kind": "linear", "weight_shape": [4, 8]},
]
NESTED = [
    {"name": "encoder.layer.0.query", "kind": "linear", "weight_shape": [64, 64]},
    {"name": "encoder.layer.0.value", "kind": "linear", "weight_shape": [64, 64]},
    {"name": "encoder.layer.1.query", "kind": "linear", "weight_shape": [64, 64]},
    {"name": "head", "kind": "linear", "weight_shape": [10, 64]},
]


def _plan(assignment, layers=NESTED, **kw):
    return ExportPlan.from_table({"layers": layers}, assignment, **kw)


MIXED = {"encoder.layer.0.query": "int4", "encoder.layer.0.value": "int8", "encoder.layer.1.query": "int4"}
CONFIG_FORMATS = ["json", "gptqmodel", "llmcompressor", "nncf", "hawq"]


@pytest.mark.parametrize("name", CONFIG_FORMATS)
def test_config_formats_round_trip(name):
    plan = _plan(MIXED)  # head left float
    exported = get_exporter(name).export(plan)
    assert exported.media_type == "application/json"
    assert exported.content == get_exporter(name).export(plan).content  # deterministic
    back = get_exporter(name).read(exported.content, [layer.name for layer in plan.layers])
    for layer in plan.layers:
        want = weight_settings(layer.candidate)
        got = back.get(layer.name)
        if want is None:
            assert got is None
        else:
            assert got["bits"] == want["bits"]
            if name != "hawq":
                assert got["symmetric"] == want["symmetric"] and got["strategy"] == want["strategy"]


def test_gptq_dynamic_rules_as_vllm_reads_them():
    body = json.loads(get_exporter("gptqmodel").export(_plan(MIXED)).content)
    assert body["bits"] == 4 and body["group_size"] == -1 and body["sym"] is True
    assert body["dynamic"] == {r"+:^encoder\.layer\.0\.value$": {"bits": 8, "group_size": -1, "sym": True}, r"-:^head$": {}}
    grouped = _plan({"head": "int3_asym_g32"}, LAYERS + [NESTED[3]])
    body = json.loads(get_exporter("gptqmodel").export(grouped).content)
    assert body == {**body, "bits": 3, "group_size": 32, "sym": False}
    with pytest.raises(ExportError, match="6 bits"):
        get_exporter("gptqmodel").export(_plan({"head": "int6"}))
    # GPTQ quantizes Linear layers only: an embedding stays 16-bit, and the export says so
    emb = [{"name": "e", "kind": "embedding", "weight_shape": [9, 4]}, NESTED[3]]
    exported = get_exporter("gptqmodel").export(_plan({"e": "int4", "head": "int4"}, emb))
    assert json.loads(exported.content)["dynamic"] == {"-:^e$": {}}
    assert exported.warnings == ("gptqmodel: layer 'e' (embedding) is planned int4 but GPTQModel quantizes Linear"
                                 " layers only, so it stays 16-bit: the model is 36 bytes larger than the plan",)
    with pytest.raises(ExportError, match="no Linear layer"):
        get_exporter("gptqmodel").export(_plan({"e": "int4"}, emb[:1]))


@pytest.mark.parametrize("name", ["gptqmodel", "nncf", "hawq"])
def test_integer_only_formats_refuse_other_formats_naming_the_layer(name):
    for candidate, words in [("nvfp4", r"NVFP4 \(E2M1\) in groups of 16"), ("mxfp4", "OCP MX FP4 e2m1"),
                             ("gguf_q4_k", "GGML Q4_K")]:
        with pytest.raises(ExportError, match=rf"{name}: layer 'head' is {candidate} \({words}.*integer weights only"):
            get_exporter(name).export(_plan({"head": candidate, "encoder.layer.0.query": "int4"}))
    # fp16 / bf16 layers are simply not quantized
    assert get_exporter(name).export(_plan({"head": "fp16", "encoder.layer.0.query": "int4"})).content


def test_llmcompressor_validated_by_compressed_tensors_when_installed():
    body = json.loads(get_exporter("llmcompressor").export(_plan(MIXED)).content)
    assert body["ignore"] == ["head"] and body["format"] == "mixed-precision"
    groups = {g["weights"]["num_bits"]: g["targets"] for g in body["config_groups"].values()}
    assert groups == {4: ["encoder.layer.0.query", "encoder.layer.1.query"], 8: ["encoder.layer.0.value"]}
    if not LlmCompressor.validator_available():
        pytest.skip("compressed-tensors not installed: structure checked only")
    from compressed_tensors.quantization import QuantizationConfig

    config = QuantizationConfig.model_validate(body)
    assert config.config_groups["group_0"].weights.strategy == "channel"
    bad = dict(body, config_groups={"g": {"targets": ["x"], "weights": {"num_bits": 4, "strategy": "group"}}})
    with pytest.raises(ExportError, match="compressed-tensors"):
        get_exporter("llmcompressor").read(json.dumps(bad).encode())


def test_nncf_scopes_and_limits():
    plan = _plan(MIXED, root_type="BertModel", module_types={"encoder": "BertEncoder", "encoder.layer": "ModuleList",
                                                             "encoder.layer.0": "BertLayer", "encoder.layer.1": "BertLayer"})
    exported = get_exporter("nncf").export(plan)
    pairs = json.loads(exported.content)["compression"]["initializer"]["precision"]["bitwidth_per_scope"]
    assert pairs[0] == [4, "BertModel/BertEncoder[encoder]/ModuleList[layer]/BertLayer[0]/NNCFLinear[query]/linear_0|WEIGHT"]
    assert exported.warnings == ()
    assert get_exporter("nncf").export(_plan(MIXED)).warnings  # unknown module classes are said, not hidden
    with pytest.raises(ExportError, match="group"):
        get_exporter("nncf").export(_plan({"head": "int4_g32"}))
    with pytest.raises(ExportError, match="schemes"):
        get_exporter("nncf").export(_plan({"head": "int4", "encoder.layer.0.query": "int4_asym"}))


def test_hawq_warns_what_it_cannot_express():
    exported = get_exporter("hawq").export(_plan({"head": "int4_asym"}))
    assert json.loads(exported.content) == {"head": 4}
    assert exported.warnings


def test_checkpoint_reads_back_with_safetensors(tmp_path):
    from safetensors.torch import load

    from workers.quantizers import parse_candidate

    model, _, _ = trained_mlp()
    source = {"format": "safetensors", "path": save_model(tmp_path / "m.safetensors", model), "architecture": "mlp",
              "hyperparams": MLP}
    plan = _plan({"fc1": "int2"}, LAYERS, model=source)
    exported = get_exporter("safetensors").export(plan)
    state = load(exported.content)
    assert state["fc1.weight"].equal(parse_candidate("int2").quantize(model.fc1.weight))
    assert state["fc2.weight"].equal(model.fc2.weight.detach())
    assert get_exporter("safetensors").read(exported.content, ["fc1", "fc2"]) == {
        "fc1": weight_settings("int2"), "fc2": None}

    # the same plan gives the same bytes, in memory and written to a file (safetensors orders its
    # metadata from a hash map; the header is made canonical)
    again = [get_exporter("safetensors").export(plan).content for _ in range(5)]
    assert all(content == exported.content for content in again)
    paths = [tmp_path / f"{k}.safetensors" for k in range(5)]
    for path in paths:
        get_exporter("safetensors").write(plan, str(path))
        assert path.read_bytes() == exported.content


def test_registry_lists_valid_names():
    assert set(CONFIG_FORMATS) | {"safetensors", "llamacpp", "llamacpp-types"} == set(exporter_names()) == set(exporters())
    with pytest.raises(ValueError, match="valid: json"):
        get_exporter("onnx")
    with pytest.raises(ValueError, match="not in the analysis table"):
        _plan({"nope": "int4"})
