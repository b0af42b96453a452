"""Sensitivity metrics: one module per metric, one registry (`get_metric`)."""

from workers.metrics._base import LayerStatistic, Metric, MetricContext
from workers.metrics._registry import get_metric, metric_names

__all__ = ["LayerStatistic", "Metric", "MetricContext", "get_metric", "metric_names"]
