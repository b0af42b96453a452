"""A sharded analysis's two halves in the job process: a shard measures its share of the calibration
samples, and the merge turns every shard's sums into the statistics an unsplit `measure` gives.

Why shares of samples: a shardable metric (Metric.shardable) is a sum over calibration samples whose
randomness is seeded by each sample's global index, and its confidence interval groups samples by that
index, so any split adds up to the unsplit run. The merge puts the per-sample sums back in sample order
(never adding across shards), so the numbers are the unsplit run's, not just close to them. The service
side (service.jobs.shards) creates the sub-jobs, runs the merge once all succeeded, cancels and fails
them together.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from workers.errors import AnalysisError, RequestError

__all__ = ["measure_share", "merged_measure", "share_of"]


def share_of(samples: int, index: int, count: int) -> range:
    """The global sample indices of shard `index` of `count`: contiguous, sizes differing by at most one."""
    if count > samples:
        raise RequestError(f"options.shards: {count} shards but only {samples} calibration samples; give at most"
                           f" {samples} shards (each shard needs a sample)")
    return range(samples * index // count, samples * (index + 1) // count)


def measure_share(model, calibration, candidates, metric, *, seed: int, index: int, count: int,
                  device: str | None, report: Callable[[float, str], None]) -> dict[str, Any]:
    """Shard `index` of `count`: the metric's sums over its share of the samples (Metric.measure_share),
    with what the merge checks them against (the sample count). The model and data are placed as
    workers.analysis places them, so a shard's numbers are the ones the unsplit analysis computes."""
    from workers.analysis import resolve_device
    from workers.metrics import MetricContext
    from workers.models import find_layers
    from workers.streaming import place

    if not getattr(metric, "shardable", False):
        raise RequestError(f"options.shards: the {metric.name} metric cannot be split across workers")
    if getattr(model, "bitplan_static_batch", None) is not None:
        raise RequestError("options.shards: a model exported with a fixed batch size is fed whole batches; it"
                           " cannot be split by samples (leave shards at 1)")
    layers = find_layers(model)
    if not layers:
        raise AnalysisError("model: no quantizable layer found (Linear, Conv1d, Conv2d or Embedding)")
    share = share_of(calibration.samples, index, count)
    target = resolve_device(device)
    place(model, target)
    calibration.to(target)
    torch.manual_seed(seed)
    ctx = MetricContext(model=model, layers=layers, calibration=calibration, candidates=list(candidates), seed=seed,
                        report=report)
    return {"index": index, "count": count, "samples": calibration.samples, **metric.measure_share(ctx, share)}


def merged_measure(metric, shares: Sequence[Mapping[str, Any]]) -> Callable[[Any], list[Any]]:
    """What workers.analysis.analyse calls instead of `metric.measure` in the merge: the statistics from
    the shards' sums, after checking they are this analysis's shards (count, samples)."""

    def measure(ctx) -> list[Any]:
        samples = ctx.calibration.samples
        for part in shares:
            if part.get("count") != len(shares) or part.get("samples") != samples:
                raise AnalysisError(f"shard_sums: shard {part.get('index')} measured {part.get('samples')} samples"
                                    f" as one of {part.get('count')} shards; this merge has {samples} samples and"
                                    f" {len(shares)} shards")
        return metric.merge_shares(ctx, [dict(part) for part in shares])

    return measure
