"""What the API checks and shows about candidates, metrics and tables, with no torch imported.

The workers' registries parse names without loading torch; only running a metric needs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.errors import InvalidInput


def check_candidates(names: list[str] | None) -> list[str]:
    from workers.quantizers import DEFAULT_CANDIDATES, parse_candidates

    if names is None:
        return list(DEFAULT_CANDIDATES)
    try:
        return [q.name for q in parse_candidates(names)]
    except ValueError as exc:
        raise InvalidInput("candidates", str(exc).removeprefix("candidates: ")) from exc


def check_metric(name: str, *, has_dataset: bool, options: dict[str, Any] | None = None) -> None:
    """The metric exists, has the data it needs, and takes every option that is not the analysis's
    own, and the analysis's own options have valid values, so a misspelt option, another metric's or
    a bad value is refused here rather than failing in the queue (metric option values: in the job)."""
    from workers.errors import RequestError
    from workers.metrics import metric_names, metric_needs_data, metric_option_names
    from workers.requests import ANALYSIS_OPTIONS, check_analysis_option_values

    if name not in metric_names():
        raise InvalidInput("metric", f"unknown metric {name!r}; valid: {', '.join(metric_names())}")
    if not has_dataset and metric_needs_data(name):
        raise InvalidInput("dataset_id", f"the {name} metric needs calibration data: upload a dataset and pass its id")
    valid = metric_option_names(name)
    unknown = sorted(k for k in (options or {}) if k not in ANALYSIS_OPTIONS and k not in valid)
    if unknown:
        raise InvalidInput(
            f"options.{unknown[0]}",
            f"unknown option for metric {name!r} (its options: {', '.join(valid) or 'none'}; the analysis's:"
            f" {', '.join(ANALYSIS_OPTIONS)}); another metric's option needs that metric named in `metric`",
        )
    try:
        check_analysis_option_values(options or {}, has_dataset=has_dataset)
    except RequestError as exc:  # "options.NAME: why"
        field, _, message = str(exc).partition(": ")
        raise InvalidInput(field, message) from exc


def check_shards(metric: str, options: dict[str, Any], dataset: Any, model_inputs: Mapping[str, Any] | None = None) -> int:
    """options.shards: an integer ≥ 1, above 1 only for a metric that shards, a model that takes any
    batch size (`model_inputs`: the input signature its upload recorded) and at most one shard per
    calibration sample (a tensor dataset's samples, capped by options.max_samples; a text dataset's
    windows are counted by the job, which refuses more shards the same way). The shard count."""
    from workers.metrics import metric_shards
    from workers.metrics._registry import SHARDABLE

    shards = options.get("shards", 1)
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise InvalidInput("options.shards", f"must be an integer ≥ 1 (sub-jobs to split the samples over), got {shards!r}")
    if shards == 1:
        return 1
    if not metric_shards(metric):
        raise InvalidInput("options.shards", f"the {metric} metric cannot be split across workers (adaptive stopping or"
                                             f" no per-sample sums); metrics that shard: {', '.join(SHARDABLE)}")
    static = (model_inputs or {}).get("static_batch")
    if isinstance(static, int):
        raise InvalidInput("options.shards", f"the model was exported with a fixed batch of {static}, so it is fed whole"
                                             " batches and cannot be split by samples; leave shards at 1, or re-export"
                                             " with a dynamic batch: torch.export.export(m, (x,), dynamic_shapes="
                                             "{'x': {0: torch.export.Dim('batch')}})")
    if dataset is not None and dataset.input_dtype != "text":
        samples = dataset.samples
        cap = options.get("max_samples")
        if isinstance(cap, int) and not isinstance(cap, bool) and 0 < cap < samples:
            samples = cap
        if shards > samples:
            raise InvalidInput("options.shards", f"{shards} shards but only {samples} calibration samples; give at most"
                                                 f" {samples}")
    return shards


_LAYER_STATS = ("mean", "ci_halfwidth", "samples", "converged")
_PROVENANCE = ("statistic", "loss", "calibration_samples", "seed", "timings", "candidates", "version", "groups",
               "ties")


def table_view(table: dict[str, Any]) -> dict[str, Any]:
    """The stored table as API rows: statistics per layer, one cell per candidate."""
    layers = []
    for row in table["layers"]:
        cells = []
        for c in row["candidates"]:
            details = {k: v for k, v in c.items() if k not in ("candidate", "damage", "bytes", "bits_per_weight")}
            cells.append({"candidate": c["candidate"], "damage": c["damage"], "bytes": c["bytes"],
                          "bits_per_weight": c["bits_per_weight"], "details": details})
        stats = {k: row.get(k) for k in _LAYER_STATS}
        stats["weight_shape"] = row.get("weight_shape")
        layers.append({"layer": row["name"], "kind": row["kind"], "weights": row["weights"],
                       "statistics": stats, "candidates": cells})
    provenance = {k: table[k] for k in _PROVENANCE if k in table}
    provenance.update(table.get("provenance") or {})
    return {"layers": layers, "provenance": provenance}
