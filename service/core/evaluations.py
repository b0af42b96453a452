"""Evaluations as the API accepts and serves them: which frontier points to measure, and the measured
points flattened for a chart.

Pure functions over stored data (no session, no torch): the routes fetch rows, these shape them. The
frontier points are fixed when an evaluation is accepted (index, assignment, costs), so a result
always refers to points of the stored frontier, however the frontier cache changes later.
"""

from __future__ import annotations

from typing import Any

MEASURED_FIELDS = ("loss", "loss_kind", "accuracy", "perplexity", "top1_agreement", "kl", "cosine")


def choose_frontier_points(frontier: dict[str, Any], k: int) -> list[dict[str, Any]]:
    """`k` points of a stored frontier (service.core.frontiers.compute_frontier's shape), evenly spaced by
    index with both ends included; each with its index, assignment (unit → candidate) and costs."""
    points = frontier["points"]
    if len(points) <= k:
        chosen = list(range(len(points)))
    elif k == 1:
        chosen = [len(points) - 1]
    else:
        chosen = sorted({round(i * (len(points) - 1) / (k - 1)) for i in range(k)})
    units, candidates = frontier["units"], frontier["candidates"]
    return [
        {
            "index": i,
            "assignment": {u: candidates[c] for u, c in zip(units, points[i]["choices"], strict=True)},
            "costs": dict(points[i]["costs"]),
            "average_bits": points[i].get("average_bits"),
            "predicted_damage": points[i]["damage"],
        }
        for i in chosen
    ]


def public_request(request: dict[str, Any]) -> dict[str, Any]:
    """What an evaluation was asked, for clients: the chosen frontier points without their assignments
    (a point's plan is its index into the stored frontier)."""
    out = dict(request)
    if "points" in out:
        out["points"] = [{k: v for k, v in p.items() if k != "assignment"} for p in out["points"]]
    return out


def _measured(row: dict[str, Any]) -> dict[str, Any]:
    measured = row.get("measured") or {}
    return {k: measured.get(k) for k in MEASURED_FIELDS}


def measured_points(
    *, target: str, request: dict[str, Any], result: dict[str, Any] | None, plan_costs: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """Every measured plan of a finished evaluation as chart points: the frontier points (with their
    stored costs) and refined plans, or the plan and its baselines at the same bytes."""
    if not result:
        return []
    out = []
    if target == "frontier":
        chosen = {p["index"]: p for p in request.get("points", [])}
        for row in result.get("points", []):
            stored = chosen.get(row.get("frontier_index"), {})
            out.append({
                "source": "frontier", "frontier_index": row.get("frontier_index"),
                "costs": stored.get("costs") or {"bytes": row["bytes"]}, "average_bits": row.get("average_bits"),
                "predicted_damage": row.get("predicted_damage"), "measured": _measured(row),
                "measured_over_predicted": row.get("measured_over_predicted"),
            })
        for row in result.get("refined", []):
            out.append({
                "source": "refined", "frontier_index": None, "costs": {"bytes": row["bytes"]},
                "average_bits": row.get("average_bits"), "predicted_damage": row.get("predicted_damage"),
                "measured": _measured(row), "measured_over_predicted": row.get("measured_over_predicted"),
            })
        return out
    plan = result["plan"]
    out.append({
        "source": "plan", "frontier_index": None, "costs": dict(plan_costs or {"bytes": plan.get("bytes")}),
        "average_bits": plan.get("average_bits"), "predicted_damage": plan.get("predicted_damage"),
        "measured": {k: plan.get(k) for k in MEASURED_FIELDS},
        "measured_over_predicted": plan.get("measured_over_predicted"),
    })
    rows = dict(result.get("baselines") or {})
    if result.get("refined") is not None:
        rows["refined"] = result["refined"]
    for name, row in rows.items():
        if "measured" not in row:  # a baseline that could not meet the budget
            continue
        out.append({
            "source": name, "frontier_index": None, "costs": {"bytes": row["bytes"]},
            "average_bits": row.get("average_bits"), "predicted_damage": row.get("predicted_damage"),
            "measured": _measured(row), "measured_over_predicted": row.get("measured_over_predicted"),
        })
    return out


def frontier_agreements(evaluations: list) -> list[dict[str, Any]]:
    """Proxy quality across measured frontier points: one row per succeeded frontier evaluation."""
    return [
        {
            "evaluation_id": e.id, "dataset_id": e.dataset_id, "cost": e.request.get("cost"),
            "points_requested": e.request.get("points_requested"), **e.rank_agreement,
        }
        for e in evaluations
        if e.status == "succeeded" and e.rank_agreement is not None
    ]
