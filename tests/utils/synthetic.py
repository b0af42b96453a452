"""Synthetic but realistic problems and stored analyses, for tests that need no torch."""

from __future__ import annotations

import random

from service.storage.db.models import AnalysisRecord, ModelRecord
from service.storage.db.session import session_scope

BITS = (2, 3, 4, 6, 8)


def problem_dict(units: int = 6, *, seed: int = 0, bits=BITS) -> dict:
    """Damage falls ~4× per extra bit (quantization noise), scaled by a per-layer sensitivity."""
    rng = random.Random(seed)
    out = []
    for i in range(units):
        weights = rng.choice([256, 1024, 4096])
        sens = rng.lognormvariate(0, 1.5)
        options = [
            {"candidate": f"int{b}", "damage": sens * 4.0 ** (-b), "costs": {"bytes": weights * b / 8 + 2 * weights / 64}}
            for b in bits
        ]
        out.append({"name": f"layer{i}", "weights": weights, "options": options})
    return {"version": 1, "units": out}


def table_for(problem: dict) -> dict:
    """A stored sensitivity table whose damages and bytes are the problem's."""
    return {"version": 1, "metric": "hutchinson", "statistic": "hessian_trace", "loss": "cross_entropy",
            "candidates": [o["candidate"] for o in problem["units"][0]["options"]],
            "layers": [{"name": u["name"], "kind": "linear", "weight_shape": [u["weights"]],
                        "weights": u["weights"], "mean": 1.0, "ci_halfwidth": 0.1, "samples": 64,
                        "converged": True,
                        "candidates": [{"candidate": o["candidate"], "damage": o["damage"],
                                        "raw_damage": o["damage"], "bytes": int(o["costs"]["bytes"]),
                                        "bits_per_weight": o["costs"]["bytes"] * 8 / u["weights"],
                                        "perturbation": 0.0} for o in u["options"]]}
                       for u in problem["units"]]}


def stored_analysis(database_url: str, problem: dict) -> str:
    """A succeeded analysis row holding `problem`, as if a job had produced it."""
    with session_scope(database_url) as s:
        model = ModelRecord(name="synthetic", sha256="0" * 64, format="safetensors", architecture="mlp",
                            hyperparams={}, size_bytes=0,
                            layers=[{"name": u["name"], "kind": "linear", "weight_shape": [u["weights"]],
                                     "parameters": u["weights"]} for u in problem["units"]])
        s.add(model)
        s.flush()
        table = table_for(problem)
        rec = AnalysisRecord(model_id=model.id, candidates=table["candidates"], metric="hutchinson", options={},
                             seed=0, status="succeeded", progress=1.0, message="done", attempts=1,
                             table=table, problem=problem)
        s.add(rec)
        s.flush()
        return rec.id


def finish_analysis(database_url: str, analysis_id: str, problem: dict) -> None:
    """Mark a submitted (queued) analysis succeeded with `problem`, as if its job had run."""
    with session_scope(database_url) as s:
        rec = s.get(AnalysisRecord, analysis_id)
        rec.status, rec.progress, rec.message, rec.attempts = "succeeded", 1.0, "done", 1
        rec.table, rec.problem = table_for(problem), problem
