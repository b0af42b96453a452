"""Bad data is a 4xx naming the tensor, and nothing is stored (issue 12, findings 5, 6 and 9)."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save as save_tensors, save_file

from tests.service.test_uploads import assert_nothing_stored, post_model
from tests.utils.hostile import npz_bomb
from tests.utils.service_factories import make_client


@pytest.fixture
def client(tmp_path):
    with make_client(tmp_path) as c:
        c.data_dir = tmp_path / "data"
        yield c


def post_dataset(client, payload: bytes, filename: str):
    return client.post("/v1/datasets", files={"file": (filename, io.BytesIO(payload))})


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def assert_refused(r, client, *, says: str, statuses=(422,)):
    assert r.status_code in statuses, r.text
    body = r.json()
    assert body["field"] == "file" and says in body["detail"], body
    assert "/tmp" not in body["detail"] and str(client.data_dir) not in body["detail"], body
    assert_nothing_stored(client)


def test_npz_member_that_is_not_npy(client):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("inputs.npy", npz_member(np.zeros((4, 3), np.float32)))
        zf.writestr("notes.txt", b"hello")
    assert_refused(post_dataset(client, buf.getvalue(), "d.npz"), client, says="'notes.txt' is not a .npy")


def test_npz_member_with_a_garbage_header(client):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("inputs.npy", b"\x93NUMPY garbage")
    assert_refused(post_dataset(client, buf.getvalue(), "d.npz"), client, says="not a readable .npz")


def test_npz_object_array_is_refused(client):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("inputs.npy", npz_member(np.array([[object()]], dtype=object), allow_pickle=True))
    assert_refused(post_dataset(client, buf.getvalue(), "d.npz"), client, says="unsupported dtype object")


def test_npz_decompression_bomb(client, tmp_path):
    bomb = npz_bomb(tmp_path / "bomb.npz", unpacked_bytes=1024**3)
    assert bomb.stat().st_size < 2 * 1024**2  # about 1 MiB that unpacks to 1 GiB
    assert_refused(post_dataset(client, bomb.read_bytes(), "bomb.npz"), client, says="expands", statuses=(413, 422))


def test_npz_within_the_unpacked_limit_but_too_large_for_this_server(tmp_path):
    with make_client(tmp_path, max_unpacked_bytes=1024**2) as c:
        c.data_dir = tmp_path / "data"
        rng = np.random.default_rng(0)
        payload = npz_bytes(inputs=rng.standard_normal((600, 512)).astype(np.float32))  # 1.2 MB, incompressible
        assert_refused(post_dataset(c, payload, "d.npz"), c, says="unpacks to")


def npz_member(arr, allow_pickle=False) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_calibration_inputs(client, bad):
    inputs = torch.randn(16, 64)
    inputs[3, 7] = bad
    payload = save_tensors({"inputs": inputs, "targets": torch.zeros(16, dtype=torch.long)})
    assert_refused(post_dataset(client, payload, "d.safetensors"), client, says="'inputs' holds NaN or infinite")


def test_non_finite_bf16_and_float_targets(client):
    inputs = torch.randn(8, 4).to(torch.bfloat16)
    targets = torch.zeros(8, 2)
    targets[5, 1] = float("inf")
    payload = save_tensors({"inputs": inputs, "targets": targets})
    assert_refused(post_dataset(client, payload, "d.safetensors"), client, says="'targets' holds NaN or infinite")
    inputs[0, 0] = float("nan")
    payload = save_tensors({"inputs": inputs})
    assert_refused(post_dataset(client, payload, "d.safetensors"), client, says="'inputs' holds NaN or infinite")


def test_non_finite_npz_inputs(client):
    inputs = np.random.default_rng(0).standard_normal((8, 5)).astype(np.float64)
    inputs[7, 4] = np.nan
    assert_refused(post_dataset(client, npz_bytes(inputs=inputs), "d.npz"), client, says="'inputs' holds NaN")


def test_finite_data_still_uploads(client):
    r = post_dataset(client, npz_bytes(inputs=np.ones((4, 3), np.float32), targets=np.zeros(4, np.int64)), "d.npz")
    assert r.status_code == 201, r.text
    r = post_dataset(client, save_tensors({"inputs": torch.randn(4, 3).half()}), "d.safetensors")
    assert r.status_code == 201, r.text


def test_non_finite_safetensors_model_weight(client, digits, tmp_path):
    state = load_file(str(digits.weights_path))
    name = sorted(state)[0]
    state[name] = state[name].clone()
    state[name].view(-1)[0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_file(state, str(path))
    r = post_model(client, path.read_bytes(), {"architecture": digits.architecture, "hyperparams": digits.hyperparams})
    assert_refused(r, client, says=f"{name!r} holds NaN or infinite values")


def test_non_finite_hf_directory_weight(client, tmp_path):
    pytest.importorskip("transformers")
    from tests.utils.service_factories import zipped
    from tests.utils.hf_factories import save_tiny

    directory = tmp_path / "gpt2"
    save_tiny("gpt2", directory)
    weights = next(directory.glob("*.safetensors"))
    state = load_file(str(weights))
    name = next(k for k in sorted(state) if k.endswith("c_attn.weight"))
    state[name][0, 0] = float("inf")
    save_file(state, str(weights), metadata={"format": "pt"})
    r = client.post("/v1/models", files={"file": ("gpt2.zip", zipped(directory))})
    assert_refused(r, client, says="holds NaN or infinite values")
    assert "c_attn.weight" in r.json()["detail"]


def test_bad_upload_messages_name_no_server_path(client):
    """The loader's error names the folder it read (the upload's staging copy): the user sees its name only."""
    pytest.importorskip("transformers")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("model/config.json", json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
        zf.writestr("model/sub/model.safetensors", save_tensors({"w": torch.zeros(2)}))
    r = client.post("/v1/models", files={"file": ("m.zip", buf.getvalue())})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "has no *.safetensors weights" in detail
    assert "/tmp" not in detail and str(client.data_dir) not in detail and "staging" not in detail, detail
    assert_nothing_stored(client)


def test_a_job_whose_blob_is_gone_fails_once_naming_no_path(client, digits):
    from tests.utils.queue_factories import wait_done
    from tests.utils.service_factories import upload_dataset, upload_model

    model = upload_model(client, digits).json()
    dataset = upload_dataset(client, digits.calibration_path).json()
    blob = client.data_dir / "blobs" / dataset["sha256"][:2] / dataset["sha256"]
    blob.unlink()
    r = client.post("/v1/analyses", json={"model_id": model["id"], "dataset_id": dataset["id"], "metric": "hutchinson",
                                          "options": {"min_probes": 8, "max_probes": 8}})
    assert r.status_code == 202, r.text
    final = wait_done(client, r.json()["id"], timeout=60)
    assert final["status"] == "failed" and final["attempts"] == 1
    assert f"{dataset['sha256']} is missing" in final["error"]
    assert str(client.data_dir) not in final["error"] and "/tmp" not in final["error"]
