"""The job-kind registry (service.jobs.kinds): one entry per record, and the child reads its
request through the request's own `from_dict`, so a bad field fails the job naming it."""

import json
import subprocess
import sys

import pytest

from service.storage import store
from service.jobs.kinds import KINDS, Payload, get_kind
from workers.requests import EvaluationRequest, ModelSource

SOURCE = ModelSource("safetensors", "/blobs/m.safetensors", "mlp", {"hidden": [8]})
PROBLEM = {"units": [{"name": "fc1", "weights": 4, "options": [{"candidate": "int4", "damage": 1.0, "costs": {"bytes": 2}}]}]}


def test_every_record_has_one_kind_and_each_kind_its_request():
    assert list(KINDS) == list(store.JOB_RECORDS) == ["analysis", "evaluation", "export", "analysis_shard"]
    for name, kind in KINDS.items():
        assert kind.name == name and kind.record is store.JOB_RECORDS[name]
        assert callable(kind.request.from_dict) and callable(kind.build) and callable(kind.run)
    assert [n for n, k in KINDS.items() if k.collect is not None] == ["export"]
    assert [n for n, k in KINDS.items() if k.fan_out is not None] == ["analysis"]  # its shards: analysis_shard
    assert [n for n, k in KINDS.items() if k.settle is not None] == ["analysis_shard"]
    with pytest.raises(ValueError, match="^kind: unknown job kind 'training'; valid kinds: analysis, evaluation, export,"
                                         " analysis_shard"):
        get_kind("training")


def test_a_payload_survives_json_and_names_what_the_sandbox_binds():
    request = EvaluationRequest(SOURCE, "/blobs/e.safetensors", problem=PROBLEM, groups={"fc1": ("fc1",)},
                                plans=({"fc1": "int4"},))
    payload = Payload(request, context={"indices": [3]})
    back = Payload.from_dict(KINDS["evaluation"], json.loads(json.dumps(payload.to_dict())))
    assert back == payload
    assert back.input_paths() == ["/blobs/m.safetensors", "/blobs/e.safetensors"] and back.output_paths() == []


def test_the_child_fails_a_bad_request_naming_the_field():
    payload = {"request": {"model": SOURCE.to_dict(), "dataset_path": "/d", "seed": -1}, "context": {}, "scratch": None}
    done = subprocess.run([sys.executable, "-m", "service.jobs.child", "analysis", "a1"], input=json.dumps(payload),
                          capture_output=True, text=True, timeout=120, check=True)
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome == {"outcome": "failed", "error": "RequestError: seed: must be a non-negative integer, got -1"}
