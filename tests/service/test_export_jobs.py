"""Exports over the real HTTP API on a tiny Hugging Face GPT-2 with a tied embedding / LM head: every LLM
target read back with its own library (gguf's tensor-name map for llama.cpp, compressed-tensors' config
classes for llm-compressor, vLLM's resolution of GPTQModel `dynamic` rules, safetensors + transformers for
the checkpoint), and the checkpoint built by an export job (queued, followed over SSE, streamed from the
blob store, cancelled, nothing left behind), on SQLite and once on PostgreSQL."""

from __future__ import annotations

import copy
import json
import re
import time

import pytest

from service.core import exports
from tests.utils.hf_factories import save_tiny
from tests.utils.queue_factories import Workers, queue_settings, wait_finished
from tests.utils.service_factories import make_client, zipped
from workers.exports import get_exporter
from workers.exports._base import weight_settings

pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

GGUF = ["gguf_q4_k", "gguf_q6_k", "gguf_q8_0"]
MIXED = ["int4_g128", "fp8_e4m3", "nvfp4", "mxfp4", "int8"]
INTEGERS = ["int4", "int8"]
TERMINAL = ("succeeded", "failed", "cancelled")


def _wait(client, url: str, timeout: float = 300) -> dict:
    return wait_finished(client, url, timeout)


def _plan(client, model_id: str, candidates: list[str], avg_bits: float) -> dict:
    """A data-free (mse) analysis over `candidates` and its plan at `avg_bits`."""
    r = client.post("/v1/analyses", json={"model_id": model_id, "metric": "mse", "candidates": candidates})
    assert r.status_code == 202, r.text
    state = _wait(client, r.headers["Location"])
    assert state["status"] == "succeeded", state["error"]
    plan = client.post(f"/v1/analyses/{state['id']}/plans", json={"budget": {"average_bits": avg_bits}})
    assert plan.status_code == 201, plan.text
    return plan.json()


def _upload_gpt2(client, tmp_path, hidden: int) -> tuple[dict, str]:
    directory = tmp_path / "gpt2"
    save_tiny("gpt2", directory, hidden=hidden)
    r = client.post("/v1/models", files={"file": ("gpt2.zip", zipped(directory))})
    assert r.status_code == 201, r.text
    return r.json(), str(directory)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A client, the uploaded GPT-2 (width 256: k-quants take its rows whole) and three plans."""
    tmp = tmp_path_factory.mktemp("export-jobs")
    with make_client(tmp) as client:
        model, directory = _upload_gpt2(client, tmp, hidden=256)
        assert model["layers"][0]["name"] == "transformer.wte"
        plans = {"gguf": _plan(client, model["id"], GGUF, 5.5), "mixed": _plan(client, model["id"], MIXED, 6),
                 "int": _plan(client, model["id"], INTEGERS, 6)}
        yield client, model, directory, plans, tmp / "data" / "blobs"


def _choices(plan: dict) -> dict[str, str]:
    return {row["layer"]: row["candidate"] for row in plan["layers"]}


def test_llamacpp_export_reads_back_with_ggufs_name_map(served):
    client, _, _, plans, _ = served
    choices = _choices(plans["gguf"])
    r = client.get(f"/v1/plans/{plans['gguf']['id']}/export", params={"format": "llamacpp"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["architecture"] == "gpt2" and body["block_count"] == 2
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, 2)
    patterns = [(row["pattern"], row["type"]) for row in body["tensor_types"]]
    for layer, candidate in choices.items():
        tensor = name_map.get_name(f"{layer}.weight", try_suffixes=(".weight",))
        assert tensor is not None, layer
        matched = [t for p, t in patterns if re.search(p, tensor)]
        if tensor == "position_embd.weight":  # llama-quantize never quantizes it: kept, and said so
            assert matched == [] and "transformer.wpe" in r.headers["X-Bitplan-Export-Warnings"]
            continue
        assert matched == [weight_settings(candidate)["ggml_type"]], layer
    # the tie: the LM head (output.weight) carries the embedding's type
    types = {row["tensor"]: row["type"] for row in body["tensor_types"]}
    assert types["output.weight"] == types["token_embd.weight"] == weight_settings(choices["transformer.wte"])["ggml_type"]
    assert body["command"].split()[:2] == ["llama-quantize", "--pure"]

    text = client.get(f"/v1/plans/{plans['gguf']['id']}/export", params={"format": "llamacpp-types"})
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
    assert text.text == body["tensor_type_file"]
    lines = dict(line.split("=") for line in text.text.splitlines())
    assert {re.sub(r"[\\^$]", "", p): t for p, t in lines.items()} == types


def test_llmcompressor_export_is_a_valid_compressed_tensors_config(served):
    from compressed_tensors.quantization import QuantizationConfig

    client, _, _, plans, _ = served
    choices = _choices(plans["mixed"])
    r = client.get(f"/v1/plans/{plans['mixed']['id']}/export", params={"format": "llmcompressor"})
    assert r.status_code == 200, r.text
    config = QuantizationConfig.model_validate(r.json())  # compressed-tensors' own classes
    # the tied embedding and LM head stay 16-bit in `ignore` (vLLM quantizes Linear layers), and it says so
    assert {"transformer.wte", "lm_head"} <= set(config.ignore)
    assert "transformer.wte" in r.headers["X-Bitplan-Export-Warnings"]
    back = get_exporter("llmcompressor").read(r.content, list(choices))
    linear = {layer: c for layer, c in choices.items() if not layer.startswith(("transformer.wte", "transformer.wpe"))}
    assert len(set(linear.values())) >= 2  # the plan mixes formats (else this test proves less)
    for layer, candidate in linear.items():
        want = weight_settings(candidate)
        got = back[layer]
        assert (got["bits"], got["type"], got["group_size"]) == (
            want["bits"], "int" if want["format"] == "int" else "float", want["group_size"]), layer


def test_gptqmodel_export_excludes_the_embedding_as_vllm_reads_it(served):
    client, _, _, plans, _ = served
    choices = _choices(plans["int"])
    r = client.get(f"/v1/plans/{plans['int']['id']}/export", params={"format": "gptqmodel"})
    assert r.status_code == 200, r.text
    assert "-:^transformer\\.wte$" in r.json()["dynamic"] and "-:^lm_head$" in r.json()["dynamic"]
    assert "transformer.wte" in r.headers["X-Bitplan-Export-Warnings"]
    back = get_exporter("gptqmodel").read(r.content, [*choices, "lm_head"])  # vLLM's resolution of the rules
    assert back["transformer.wte"] is None and back["lm_head"] is None
    for layer, candidate in choices.items():
        if layer.startswith(("transformer.wte", "transformer.wpe")):
            continue
        assert back[layer]["bits"] == weight_settings(candidate)["bits"], layer


def _events(client, url: str) -> list[dict]:
    with client.stream("GET", f"{url}/events") as events:
        assert events.status_code == 200 and events.headers["content-type"].startswith("text/event-stream")
        blocks = [b for b in "".join(events.iter_text()).split("\n\n") if b.strip()]
    assert blocks[-1].startswith("event: end")
    return [json.loads(b.split("data: ", 1)[1]) for b in blocks if "event: export" in b]


def _leftovers(blobs, export_id: str) -> list[str]:
    staging = blobs / "staging"
    return sorted(p.name for p in staging.glob(f"export-{export_id}-*")) + sorted(
        str(p) for p in (blobs / "exports" / export_id).glob("*"))


def test_checkpoint_job_keeps_the_tie_and_matches_the_round_trip(served):
    import torch
    import transformers as tf
    from safetensors.torch import load

    from workers.models import find_layers, load_model
    from workers.quantizers import parse_candidate

    client, _, directory, plans, blobs = served
    plan = plans["mixed"]
    r = client.post(f"/v1/plans/{plan['id']}/exports", json={"format": "safetensors"})
    assert r.status_code == 202, r.text
    url = r.headers["Location"]
    assert url == f"/v1/exports/{r.json()['id']}" and r.json()["status"] in ("queued", "running")
    assert client.get(f"{url}/file").status_code in (409, 200)  # 409 until it has succeeded
    snapshots = _events(client, url)
    assert snapshots[-1]["status"] == "succeeded", snapshots[-1]
    state = client.get(url).json()
    assert state["status"] == "succeeded" and state["progress"]["fraction"] == 1.0 and state["attempts"] == 1
    assert state["links"]["file"] == f"{url}/file"

    f = client.get(f"{url}/file")
    assert f.status_code == 200 and f.headers["content-type"] == "application/octet-stream"
    assert 'filename="model.fakequant.safetensors"' in f.headers["content-disposition"]
    import hashlib

    assert len(f.content) == state["size_bytes"] and hashlib.sha256(f.content).hexdigest() == state["sha256"]
    assert _leftovers(blobs, state["id"]) == [str(blobs / "exports" / state["id"] / state["sha256"])]

    state_dict = load(f.content)  # safetensors' own parser
    header = json.loads(f.content[8 : 8 + int.from_bytes(f.content[:8], "little")])["__metadata__"]
    assert json.loads(header["bitplan_plan"]) == _choices(plan)
    assert json.loads(header["bitplan_tied"]) == {"lm_head.weight": "transformer.wte.weight"}
    assert "lm_head.weight" not in state_dict
    float_model = load_model({"format": "hf", "path": directory})
    for info, weight in find_layers(float_model):  # each planned weight is its measured round trip
        candidate = _choices(plan)[info.name]
        want = info.quantize(parse_candidate(candidate), weight)
        assert torch.equal(state_dict[f"{info.name}.weight"], want), info.name
    fresh = tf.GPT2LMHeadModel(copy.deepcopy(float_model.config))  # transformers loads it back, tied
    missing, unexpected = fresh.load_state_dict(state_dict, strict=False)
    assert unexpected == [] and set(missing) <= {"lm_head.weight"}
    fresh.tie_weights()
    assert torch.equal(fresh.lm_head.weight, state_dict["transformer.wte.weight"])

    # the synchronous export of this small model is the same checkpoint (safetensors orders the metadata
    # keys by a hash map, so the bytes may differ there)
    same = client.get(f"/v1/plans/{plan['id']}/export", params={"format": "safetensors"})
    assert same.status_code == 200
    again = load(same.content)
    assert again.keys() == state_dict.keys() and all(torch.equal(again[k], state_dict[k]) for k in again)
    assert json.loads(same.content[8 : 8 + int.from_bytes(same.content[:8], "little")])["__metadata__"] == header


def test_cancel_a_running_export_leaves_nothing(served):
    client, _, _, plans, blobs = served
    r = client.post(f"/v1/plans/{plans['gguf']['id']}/exports", json={"format": "safetensors"})
    assert r.status_code == 202, r.text
    url, export_id = r.headers["Location"], r.json()["id"]
    deadline = time.monotonic() + 60
    while client.get(url).json()["status"] == "queued":  # claimed: its child is starting (torch import)
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cancel = client.post(f"{url}/cancel")
    assert cancel.status_code == 202, cancel.text
    state = _wait(client, url, timeout=30)
    assert state["status"] == "cancelled" and state["size_bytes"] is None and state["sha256"] is None
    assert client.get(f"{url}/file").status_code == 409
    assert client.post(f"{url}/cancel").status_code == 202  # cancelling again is a no-op
    deadline = time.monotonic() + 10  # the runner removes the scratch folder as the attempt ends
    while _leftovers(blobs, export_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _leftovers(blobs, export_id) == []


def test_bad_export_requests(served, monkeypatch):
    client, _, _, plans, _ = served
    pid = plans["int"]["id"]
    r = client.post(f"/v1/plans/{pid}/exports", json={"format": "onnx"})
    assert r.status_code == 422 and r.json()["field"] == "format" and "safetensors" in r.text
    r = client.post(f"/v1/plans/{pid}/exports", json={"format": "llamacpp"})
    assert r.status_code == 422 and f"GET /v1/plans/{{id}}/export?format=llamacpp" in r.text
    r = client.post(f"/v1/plans/{pid}/exports", json={"format": "safetensors", "fromat": 1})
    assert r.status_code == 422 and "fromat" in r.text
    r = client.post("/v1/plans/nope/exports", json={"format": "safetensors"})
    assert r.status_code == 404 and r.json()["field"] == "plan_id"
    for path in ("/v1/exports/nope", "/v1/exports/nope/file", "/v1/exports/nope/events"):
        assert client.get(path).status_code == 404, path
    assert client.post("/v1/exports/nope/cancel").json()["field"] == "export_id"
    # a model past the synchronous size is pointed at the job, naming the URL to post to
    monkeypatch.setattr(exports, "SYNC_CHECKPOINT_MAX_BYTES", 1000)
    r = client.get(f"/v1/plans/{pid}/export", params={"format": "safetensors"})
    assert r.status_code == 409 and r.json()["field"] == "format"
    assert f"POST /v1/plans/{pid}/exports" in r.text


def test_export_job_on_postgres_through_rq_workers(tmp_path, postgres_url, redis_server):
    """What a multi-machine deployment runs: the API queues on Redis, a `bitplan worker` process builds
    the file in its sandboxed child, the API streams it from the shared blob store."""
    from fastapi.testclient import TestClient
    from safetensors.torch import load

    from service.api.app import create_app
    from service.storage.db.migrate import at_head, upgrade

    upgrade(postgres_url)
    assert at_head(postgres_url)
    settings = queue_settings(tmp_path, postgres_url, redis_server.url)
    workers = Workers(settings, tmp_path)
    with TestClient(create_app(settings)) as client:
        workers.start(1)
        try:
            model, _ = _upload_gpt2(client, tmp_path, hidden=16)
            plan = _plan(client, model["id"], INTEGERS, 6)
            r = client.post(f"/v1/plans/{plan['id']}/exports", json={"format": "safetensors"})
            assert r.status_code == 202, r.text
            state = _wait(client, r.headers["Location"])
            assert state["status"] == "succeeded", state["error"]
            content = client.get(f"{r.headers['Location']}/file").content
        finally:
            workers.stop()
    assert len(content) == state["size_bytes"]
    assert {f"{layer}.weight" for layer in _choices(plan)} - {"lm_head.weight"} <= set(load(content))
    assert workers.logs().count("Job OK") == 2  # the analysis and the export ran on the worker
