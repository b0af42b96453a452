"""A dataset that cannot feed the model is refused at POST /v1/analyses (422 naming both shapes), before
anything is queued; a static-batch .pt2 is accepted and analysed end to end (but not split into shards)."""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest
import torch
from safetensors.numpy import save as save_np

from service.jobs.sandbox import why_unavailable
from tests.utils.service_factories import make_client, upload_model, zipped


def _dataset(client, inputs: np.ndarray, targets: np.ndarray | None = None) -> dict:
    tensors = {"inputs": np.ascontiguousarray(inputs)}
    if targets is not None:
        tensors["targets"] = targets
    r = client.post("/v1/datasets", files={"file": ("d.safetensors", save_np(tensors))})
    assert r.status_code == 201, r.text
    return r.json()


def _nothing_queued(client) -> None:
    assert client.get("/v1/analyses").json() == []
    assert client.app.state.queue._pending.qsize() == 0  # the inline queue's offers (not started: run_jobs=False)


@pytest.fixture
def idle_client(tmp_path):
    with make_client(tmp_path, run_jobs=False) as c:
        yield c


def test_a_dataset_of_the_wrong_feature_size_is_refused_at_submit_with_both_shapes(idle_client, digits):
    client = idle_client
    model = upload_model(client, digits).json()
    assert model["inputs"] == {"takes": "tensor", "shape": [None, 64], "dtype": "float32", "static_batch": None}
    wrong = _dataset(client, np.random.default_rng(0).normal(size=(32, 5)).astype(np.float32))
    r = client.post("/v1/analyses", json={"model_id": model["id"], "dataset_id": wrong["id"]})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail.startswith("dataset_id: the model takes [*, 64] float32, i.e. [64] per sample")
    assert "the dataset's inputs are [32, 5] F32" in detail
    _nothing_queued(client)

    ints = _dataset(client, np.arange(32 * 64, dtype=np.int64).reshape(32, 64))
    assert ints["max_token_id"] == 32 * 64 - 1
    r = client.post("/v1/analyses", json={"model_id": model["id"], "dataset_id": ints["id"]})
    assert r.status_code == 422 and "[32, 64] I64" in r.json()["detail"], r.text
    _nothing_queued(client)

    right = _dataset(client, np.random.default_rng(0).normal(size=(32, 64)).astype(np.float32))
    assert right["max_token_id"] is None
    r = client.post("/v1/analyses", json={"model_id": model["id"], "dataset_id": right["id"]})
    assert r.status_code == 202, r.text


def test_token_ids_past_the_vocabulary_or_positions_are_refused_at_submit(idle_client, tmp_path):
    pytest.importorskip("transformers")
    from tests.utils.hf_factories import save_tiny

    client = idle_client
    save_tiny("gpt2", tmp_path / "gpt2")
    r = client.post("/v1/models", files={"file": ("gpt2.zip", zipped(tmp_path / "gpt2"))})
    assert r.status_code == 201, r.text
    model = r.json()
    vocab = model["inputs"]["vocab_size"]
    assert model["inputs"] == {"takes": "token_ids", "vocab_size": vocab, "max_positions": 64}

    past_vocab = _dataset(client, np.full((8, 16), vocab, dtype=np.int64))
    r = client.post("/v1/analyses", json={"model_id": model["id"], "dataset_id": past_vocab["id"]})
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == (f"dataset_id: the model takes integer token ids [samples, sequence] below its"
                                  f" vocabulary size {vocab}; the dataset's inputs are [8, 16] I64 and hold token id {vocab}")
    too_long = _dataset(client, np.ones((8, 100), dtype=np.int64))
    r = client.post("/v1/analyses", json={"model_id": model["id"], "dataset_id": too_long["id"]})
    assert r.status_code == 422 and "at most 64 positions" in r.json()["detail"], r.text
    assert "[8, 100] I64" in r.json()["detail"]
    floats = _dataset(client, np.ones((8, 16), dtype=np.float32))
    r = client.post("/v1/analyses", json={"model_id": model["id"], "dataset_id": floats["id"]})
    assert r.status_code == 422 and "integer token ids" in r.json()["detail"], r.text
    _nothing_queued(client)

    r = client.post("/v1/analyses", json={"model_id": model["id"], "dataset_id": too_long["id"],
                                          "options": {"max_length": 32}})
    assert r.status_code == 202, r.text


needs_sandbox = pytest.mark.skipif(
    why_unavailable() is not None and os.environ.get("CI") != "true", reason=f"no sandbox: {why_unavailable()}"
)


@needs_sandbox
def test_a_static_batch_pt2_uploads_refuses_too_few_samples_and_analyses_end_to_end(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 8 * 8, 3)).eval()
    buf = io.BytesIO()
    torch.export.save(torch.export.export(net, (torch.randn(4, 1, 8, 8),)), buf)  # the default: batch fixed at 4
    rng = np.random.default_rng(0)
    with make_client(tmp_path) as client:
        r = client.post("/v1/models", files={"file": ("static.pt2", buf.getvalue())})
        assert r.status_code == 201, r.text
        model = r.json()
        assert model["inputs"]["static_batch"] == 4
        few = _dataset(client, rng.normal(size=(3, 1, 8, 8)).astype(np.float32))
        r = client.post("/v1/analyses", json={"model_id": model["id"], "dataset_id": few["id"]})
        assert r.status_code == 422, r.text
        assert "fixed batch of 4" in r.json()["detail"] and "dynamic_shapes" in r.json()["detail"]
        assert client.get("/v1/analyses").json() == []

        enough = _dataset(client, rng.normal(size=(10, 1, 8, 8)).astype(np.float32))
        r = client.post("/v1/analyses", json={"model_id": model["id"], "dataset_id": enough["id"],
                                              "options": {"shards": 2}})
        assert r.status_code == 422, r.text  # whole batches of 4 cannot be split by samples: said at submit
        assert "options.shards" in r.json()["detail"] and "fixed batch of 4" in r.json()["detail"]
        assert client.get("/v1/analyses").json() == []
        r = client.post("/v1/analyses", json={"model_id": model["id"], "dataset_id": enough["id"],
                                              "candidates": ["int4", "int8"], "metric": "hutchinson",
                                              "options": {"max_probes": 16}})
        assert r.status_code == 202, r.text
        analysis_id = r.json()["id"]
        deadline = time.monotonic() + 180
        while (state := client.get(f"/v1/analyses/{analysis_id}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.3)
        assert state["status"] == "succeeded", state["error"]
        table = client.get(f"/v1/analyses/{analysis_id}/table").json()
        assert table["provenance"]["batch_size"]["used"] == 4
        assert table["provenance"]["static_batch"] == {"batch": 4, "samples_used": 8, "samples_left_out": 2}
