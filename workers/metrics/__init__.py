"""Sensitivity metrics: one module per metric, one registry (`METRICS`, `get_metric`).

hutchinson (Tr H per layer), eigen (top eigenvalue of H per layer), fisher (diagonal Fisher),
gauss_newton (exact ½ ΔWᵀGΔW per layer × candidate), input_covariance (½ Σ_o B_o ΔW_o A ΔW_oᵀ from
the layer-input covariance, probe-free), sampled_gauss_newton (the same form as gauss_newton
from sampled-label gradients, one backward per draw for all layers), mse (data-free weight error), loss_delta
(measured loss change). Importing this package loads no torch: only `get_metric` imports the
chosen metric's module.
"""

from workers.metrics._base import LayerStatistic, Metric, MetricContext
from workers.metrics._registry import (
    DEFAULT_METRIC, METRICS, get_metric, metric_names, metric_needs_data, metric_option_names, metric_options,
    metric_shards,
)

__all__ = [
    "DEFAULT_METRIC",
    "METRICS",
    "LayerStatistic",
    "Metric",
    "MetricContext",
    "get_metric",
    "metric_names",
    "metric_needs_data",
    "metric_option_names",
    "metric_options",
    "metric_shards",
]
