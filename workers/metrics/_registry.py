"""The one registry of sensitivity metrics; modules are imported on first lookup."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any

from workers.metrics._base import Metric

_METRICS: dict[str, str] = {
    "hutchinson": "workers.metrics.hutchinson:Hutchinson",
}


def metric_names() -> tuple[str, ...]:
    return tuple(sorted(_METRICS))


def get_metric(name: str, options: Mapping[str, Any] | None = None) -> Metric:
    """The metric `name` configured with `options`; ValueError naming the valid names / options."""
    if name not in _METRICS:
        raise ValueError(f"metric: unknown {name!r} (valid: {', '.join(metric_names())})")
    module, cls_name = _METRICS[name].split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    options = dict(options or {})
    if dataclasses.is_dataclass(cls):
        valid = [f.name for f in dataclasses.fields(cls) if f.init]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(
                f"options.{unknown[0]}: unknown option for metric {name!r} (valid: {', '.join(valid)})"
            )
    metric = cls(**options)
    if not metric.available():
        raise ValueError(f"metric: {name!r} is not available (an optional dependency is missing)")
    return metric
