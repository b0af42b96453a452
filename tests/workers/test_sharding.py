"""Sharded measurement in the job process (workers.sharding): shards' sums merged give the unsplit table."""

from __future__ import annotations

import json

import pytest

from tests.utils.workers_factories import MLP, save_dataset, save_model, trained_mlp
from workers.errors import AnalysisError, RequestError
from workers.jobs import run_analysis_job, run_shard_job
from workers.requests import AnalysisRequest
from workers.sharding import share_of


@pytest.fixture
def request_dict(tmp_path):
    model, x, y = trained_mlp()
    return {"model": {"format": "safetensors", "path": save_model(tmp_path / "m.safetensors", model),
                      "architecture": "mlp", "hyperparams": MLP},
            "dataset_path": save_dataset(tmp_path / "d.safetensors", x, y),
            "candidates": ["int2", "int4", "int8"], "seed": 11,
            "options": {"draws": 2, "groups": 8, "batch_size": 16}}


def _cells(table: dict) -> list[tuple]:
    return [(row["name"], c["candidate"], c["damage"], c["raw_damage"], c["damage_ci"], row["mean"], row["ci_halfwidth"])
            for row in table["layers"] for c in row["candidates"]]


@pytest.mark.parametrize("count", [2, 3])
def test_merged_shards_equal_the_unsplit_analysis(request_dict, count):
    whole = run_analysis_job(request_dict)
    sharded = {**request_dict, "options": {**request_dict["options"], "shards": count}}
    sums = [run_shard_job({**sharded, "shard": [i, count]}) for i in range(count)]
    sums = json.loads(json.dumps(sums))  # as the runner stores and hands them on
    merged = run_analysis_job({**sharded, "shard_sums": sums})
    assert _cells(merged) == _cells(whole)  # the same float64 sums in the same order: equal, not close
    assert merged["provenance"]["shards"] == count
    assert merged["provenance"]["metric_run"]["shards"] == count


def test_shares_cover_every_sample_once():
    shares = [share_of(10, i, 3) for i in range(3)]
    assert [list(s) for s in shares] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    with pytest.raises(RequestError, match="options.shards: 11 shards but only 10 calibration samples"):
        share_of(10, 0, 11)


def test_more_shards_than_samples_fail_naming_the_field(request_dict):
    sharded = {**request_dict, "options": {**request_dict["options"], "shards": 1000}}
    with pytest.raises(RequestError, match="options.shards: 1000 shards but only 64 calibration samples"):
        run_shard_job({**sharded, "shard": [0, 1000]})


@pytest.mark.parametrize("change, pattern", [
    ({"metric": "hutchinson", "options": {"shards": 2}}, "options.shards: the hutchinson metric cannot be split"),
    ({"options": {"shards": 0}}, "options.shards: must be a positive integer"),
    ({"options": {"shards": 2}, "shard": [2, 2]}, "shard: must be \\[index, count\\]"),
    ({"options": {"shards": 2}, "shard_sums": [{}]}, "shard_sums: must be one JSON object per shard"),
])
def test_bad_shard_requests_name_the_field(request_dict, change, pattern):
    with pytest.raises(RequestError, match=pattern):
        AnalysisRequest.from_dict({**request_dict, **change})


def test_merge_refuses_shards_of_another_split(request_dict):
    sharded = {**request_dict, "options": {**request_dict["options"], "shards": 2}}
    sums = [run_shard_job({**sharded, "shard": [i, 2]}) for i in range(2)]
    sums[1] = {**sums[1], "samples": 63}
    with pytest.raises(AnalysisError, match="shard_sums: shard 1 measured 63 samples"):
        run_analysis_job({**sharded, "shard_sums": sums})
