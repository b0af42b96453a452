"""Calibration files: safetensors, npz, JSONL and plain text; caps reported in the provenance."""

import json

import numpy as np
import pytest
import torch

from tests.utils.workers_factories import save_dataset
from workers.data import TEXT_DEFAULTS, load_calibration, sniff
from workers.errors import DatasetError


class CharTokenizer:
    """A stand-in with the HF call signature: one id per character, EOS = 0."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [1 + ord(c) % 50 for c in text]}


def test_npz_inputs_and_targets(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, inputs=np.arange(24, dtype=np.float32).reshape(6, 4), targets=np.arange(6) % 3, extra=np.ones(2))
    calib = load_calibration(str(path), batch_size=4, max_samples=5)
    assert sniff(str(path)) == "npz" and calib.samples == 5 and calib.targets.tolist() == [0, 1, 2, 0, 1]
    assert calib.provenance == {"format": "npz", "samples": 5, "samples_in_file": 6, "max_samples": 5,
                                "max_length": None, "sample_shape": [4], "truncated": True}
    assert [x.shape[0] for x, _ in calib.batches()] == [4, 1]


def test_npz_refuses_pickled_objects_and_missing_inputs(tmp_path):
    np.savez(tmp_path / "obj.npz", inputs=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DatasetError, match="npz"):
        load_calibration(str(tmp_path / "obj.npz"))
    np.savez(tmp_path / "none.npz", x=np.ones(3))
    with pytest.raises(DatasetError, match="no array named 'inputs'"):
        load_calibration(str(tmp_path / "none.npz"))


def test_token_ids_and_max_length(tmp_path):
    ids = torch.randint(0, 30, (5, 20))
    path = save_dataset(tmp_path / "ids.safetensors", ids.float())
    with pytest.raises(DatasetError, match="integer token ids"):
        load_calibration(path, token_ids=True)
    path = tmp_path / "ids.npz"
    np.savez(path, inputs=ids.numpy())
    calib = load_calibration(str(path), token_ids=True, max_length=8)
    assert calib.inputs.dtype == torch.long and calib.inputs.shape == (5, 8)
    assert calib.provenance["truncated"] is True and calib.provenance["max_length"] == 8
    with pytest.raises(DatasetError, match="floating-point"):
        load_calibration(str(path))  # a model taking float inputs


def test_jsonl_text_windows_with_next_token_targets(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(["abcdef", "ghij"] * 3)))
    calib = load_calibration(str(path), tokenizer=CharTokenizer(), causal_lm=True, max_length=5, max_samples=3)
    stream = []
    for t in ["abcdef", "ghij"] * 3:
        stream += [1 + ord(c) % 50 for c in t] + [0]
    assert calib.inputs.tolist() == torch.tensor(stream[:15]).reshape(3, 5).tolist()
    assert torch.equal(calib.targets, calib.inputs[:, 1:])
    prov = calib.provenance
    assert (prov["format"], prov["samples"], prov["sequence_length"], prov["tokens"]) == ("jsonl", 3, 5, 15)
    assert prov["truncated"] is True and prov["targets"] == "next_token"


def test_plain_text_short_corpus_and_defaults(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("hello\n\nworld\n")
    calib = load_calibration(str(path), tokenizer=CharTokenizer())
    assert calib.samples == 1 and calib.inputs.shape[1] == 11 and calib.targets is None  # 5 + EOS + 5
    assert calib.provenance["max_samples"] == TEXT_DEFAULTS["max_samples"] and calib.provenance["format"] == "text"


def test_text_errors(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(DatasetError, match="line 2 has no string field"):
        load_calibration(str(path), tokenizer=CharTokenizer())
    with pytest.raises(DatasetError, match="needs a model with its own tokenizer"):
        load_calibration(str(path))
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DatasetError, match="UTF-8"):
        load_calibration(str(tmp_path / "bin"), tokenizer=CharTokenizer())
    with pytest.raises(ValueError, match="options.max_length"):
        load_calibration(str(path), max_length=0)
