"""How well a sensitivity proxy ranks what it predicts: rank agreement with measured damage.

A proxy (Hutchinson trace × perturbation, Fisher, MSE ...) is only useful if it orders layers and
plans the way the measured loss does. This module reports Spearman's ρ and Kendall's τ-b (both
handle ties: average ranks for ρ, the tie-corrected τ-b) between
- each metric's predicted per-layer damage and the measured per-layer Δloss (`loss_delta` table),
  over every (layer, candidate) pair and per candidate across layers;
- predicted plan damage and measured loss across frontier points.

Pure numpy (no torch, no scipy needed); the tests check the numbers against scipy.stats.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["kendall_tau_b", "proxy_quality", "rank_agreement", "rankdata", "spearman"]


def rankdata(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, tied values sharing the average of their ranks."""
    x = np.asarray(values, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ: Pearson correlation of the average ranks; NaN when either side is constant."""
    _check(x, y)
    rx, ry = rankdata(x), rankdata(y)
    rx -= rx.mean()
    ry -= ry.mean()
    denom = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry) / denom if denom > 0 else math.nan


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ-b = (C − D) / √((n0 − n1)(n0 − n2)), ties in x (n1) or y (n2) corrected;
    NaN when either side is constant. O(n²) in blocks: fine for thousands of pairs."""
    _check(x, y)
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = len(a)
    s = 0.0  # Σ sign(Δx)·sign(Δy) over pairs i<j
    tx = ty = 0.0  # pairs not tied in x / in y
    block = max(1, 2_000_000 // max(n, 1))
    for start in range(0, n, block):
        stop = min(n, start + block)
        dx = np.sign(a[start:stop, None] - a[None, :])
        dy = np.sign(b[start:stop, None] - b[None, :])
        upper = np.arange(start, stop)[:, None] < np.arange(n)[None, :]
        s += float((dx * dy)[upper].sum())
        tx += float((dx != 0)[upper].sum())
        ty += float((dy != 0)[upper].sum())
    denom = math.sqrt(tx * ty)
    return s / denom if denom > 0 else math.nan


def _check(x: Sequence[float], y: Sequence[float]) -> None:
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    if len(x) < 2:
        raise ValueError("rank agreement needs at least 2 pairs")
    if not (np.all(np.isfinite(np.asarray(x, float))) and np.all(np.isfinite(np.asarray(y, float)))):
        raise ValueError("rank agreement needs finite values")


def _nan_to_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def rank_agreement(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, Any]:
    """{"spearman", "kendall_tau_b", "n"}; None where undefined (fewer than 2 points, a constant side)."""
    if len(predicted) < 2:
        return {"spearman": None, "kendall_tau_b": None, "n": len(predicted)}
    return {
        "spearman": _nan_to_none(spearman(predicted, measured)),
        "kendall_tau_b": _nan_to_none(kendall_tau_b(predicted, measured)),
        "n": len(predicted),
    }


def _damages(table: Mapping[str, Any], field: str) -> dict[tuple[str, str], float]:
    return {
        (layer["name"], c["candidate"]): float(c.get(field, c["damage"]))
        for layer in table["layers"]
        for c in layer["candidates"]
    }


def proxy_quality(
    tables: Mapping[str, Mapping[str, Any]],
    measured: Mapping[str, Any],
    *,
    frontier_points: Sequence[Mapping[str, Any]] = (),
    field: str = "raw_damage",
) -> dict[str, Any]:
    """Rank agreement of each metric's table (`tables`: metric name → SensitivityTable dict) with a
    measured per-layer Δloss table (`measured`, same shape). `field` picks the proxy's raw damage
    (default: before the monotone repair, i.e. what the proxy itself said); the measured side always
    uses its raw value too. Pairs present in both tables are compared.

    `frontier_points`: rows with "predicted_damage" and measured loss (row["measured"]["loss"]).
    """
    truth = _damages(measured, "raw_damage")
    result: dict[str, Any] = {"metrics": {}, "measured_metric": measured.get("metric")}
    for name, table in tables.items():
        predicted = _damages(table, field)
        keys = [k for k in predicted if k in truth]
        overall = rank_agreement([predicted[k] for k in keys], [truth[k] for k in keys])
        per_candidate: dict[str, Any] = {}
        for cand in sorted({c for _, c in keys}):
            ks = [k for k in keys if k[1] == cand]
            per_candidate[cand] = rank_agreement([predicted[k] for k in ks], [truth[k] for k in ks])
        result["metrics"][name] = {"pairs": overall, "per_candidate": per_candidate}
    if frontier_points:
        rows = [p for p in frontier_points if p.get("measured") and p["measured"].get("loss") is not None]
        result["frontier"] = rank_agreement(
            [float(p["predicted_damage"]) for p in rows], [float(p["measured"]["loss"]) for p in rows]
        )
    return result
