"""Uploads beyond safetensors: zipped Hugging Face directories, .npz and text calibration, end to end."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from tests.utils.hf_factories import save_tiny, write_jsonl
from tests.utils.service_factories import make_client, zipped

pytest.importorskip("transformers")


@pytest.fixture
def client(tmp_path):
    with make_client(tmp_path) as c:
        yield c


def test_hf_directory_with_text_calibration(client, tmp_path):
    directory = tmp_path / "gpt2"
    save_tiny("gpt2", directory)
    r = client.post("/v1/models", files={"file": ("gpt2.zip", zipped(directory))})
    assert r.status_code == 201, r.text
    model = r.json()
    assert model["format"] == "hf" and model["architecture"] is None
    kinds = {l["kind"] for l in model["layers"]}
    assert "linear" in kinds and "embedding" in kinds
    assert not (tmp_path / "data" / "unpacked").exists()  # validation unpacks into scratch space only

    text = write_jsonl(tmp_path / "calib.jsonl")
    r = client.post("/v1/datasets", files={"file": ("calib.jsonl", open(text, "rb"))})
    assert r.status_code == 201, r.text
    dataset = r.json()
    assert dataset["input_dtype"] == "text" and dataset["samples"] == 16

    r = client.post("/v1/analyses", json={"model_id": model["id"], "dataset_id": dataset["id"],
                                          "candidates": ["int4", "int8"], "metric": "hutchinson",
                                          "options": {"max_probes": 32}})
    assert r.status_code == 202, r.text
    analysis_id = r.json()["id"]
    deadline = time.monotonic() + 180
    while (state := client.get(f"/v1/analyses/{analysis_id}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert state["status"] == "succeeded", state["error"]
    table = client.get(f"/v1/analyses/{analysis_id}/table").json()
    # next-token targets from the tokenized text, but a language model's default loss is label-free
    assert table["provenance"]["loss"] == "kl_label_free"
    assert len(table["layers"]) >= 5
    plan = client.post(f"/v1/analyses/{analysis_id}/plans", json={"budget": {"average_bits": 6}})
    assert plan.status_code == 201, plan.text


def test_hf_archive_checks(client, tmp_path):
    directory = tmp_path / "bert"
    save_tiny("bert", directory)
    for weights in directory.glob("*.safetensors"):
        weights.unlink()
    (directory / "pytorch_model.bin").write_bytes(b"pickle would run here")
    r = client.post("/v1/models", files={"file": ("bert.zip", zipped(directory, top=None))})
    assert r.status_code == 422 and "safetensors" in r.json()["detail"]
    r = client.post("/v1/models", files={"file": ("bert.zip", zipped(directory))},
                    data={"spec": '{"architecture": "mlp", "hyperparams": {}}'})
    assert r.status_code == 422


def test_npz_and_text_datasets(client, tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, inputs=np.zeros((10, 64), np.float32), targets=np.arange(10))
    r = client.post("/v1/datasets", files={"file": ("calib.npz", path.read_bytes())})
    assert r.status_code == 201, r.text
    assert r.json()["samples"] == 10 and r.json()["has_targets"] and r.json()["input_shape"] == [64]

    bad = tmp_path / "objects.npz"
    np.savez(bad, inputs=np.array([{"a": 1}, None], dtype=object))
    r = client.post("/v1/datasets", files={"file": ("o.npz", bad.read_bytes())})
    assert r.status_code == 422 and r.json()["field"] == "file"  # object arrays would need pickle

    r = client.post("/v1/datasets", files={"file": ("l.txt", b"first line\nsecond line\n\nthird\n")})
    assert r.status_code == 201 and r.json()["samples"] == 3
    r = client.post("/v1/datasets", files={"file": ("b.jsonl", b'{"text": "ok"}\n{"txt": "no"}\n')})
    assert r.status_code == 422 and "line 2" in r.json()["detail"]
    r = client.post("/v1/datasets", files={"file": ("bin", b"\xff\xfe\x00\x01" * 10)})
    assert r.status_code == 422
