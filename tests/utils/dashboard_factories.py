"""Factories for the dashboard's browser tests and bench: a live API server and a synthetic analysis.

The synthetic analysis is written straight into the database (no torch, no job): a table and a
solver problem of `layers` units, and its frontier assembled by the service's own `compute_frontier`
and stored as the endpoint would store it, so the page loads what a real large analysis serves.

One shortcut: the exact frontier of 500 units at 200 budgets takes minutes of solver time here, so
its points are taken from the lower convex hull instead. Every hull vertex is an exact optimum at its
own cost (a Lagrangian solution), so the points are still true frontier points, only fewer kinds of
them; the payload's shape and size are the endpoint's.
"""

from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from service.api.app import create_app
from service.config import Settings
from service.storage.db.models import AnalysisRecord, FrontierRecord, ModelRecord, utcnow
from service.storage.db.session import session_scope
from unittest import mock

from service.core import frontiers as service_frontiers
from service.core.frontiers import compute_frontier
from service.core.planning import StoredProblem
from solver import lower_convex_hull, problem_to_dict
from solver._frontier import Frontier
from tests.utils.servers import free_port
from workers.table import SensitivityTable
from workers.units import group_layers

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
    "--no-first-run", "--disable-component-update", "--disable-sync",
]


@dataclass
class LiveServer:
    """uvicorn serving the real app on a free loopback port, in a thread of this process."""

    url: str
    settings: Settings
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def client(self, **headers: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, headers=headers)


def start_live_server(data_dir: Path, **overrides) -> LiveServer:
    port = free_port()
    settings = Settings(data_dir=data_dir, host="127.0.0.1", port=port, _env_file=None, **overrides)
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the API server did not start on port {port}")
        time.sleep(0.05)
    return LiveServer(url=f"http://127.0.0.1:{port}", settings=settings, server=server, thread=thread)


CANDIDATES = [("int2", 2), ("int3", 3), ("int4", 4), ("int6", 6), ("int8", 8)]


def synthetic_table(layers: int, *, seed: int = 0) -> dict:
    """A table shaped like the workers' (SensitivityTable.to_dict): log-normal traces, damage
    ∝ Tr(H) × the quantization error of each format (which shrinks 4× per extra bit)."""
    rng = random.Random(seed)
    rows = []
    for i in range(layers):
        rows_out, cols = rng.choice([(256, 256), (512, 256), (1024, 512), (256, 1024)])
        weights = rows_out * cols
        trace = weights * 10 ** rng.uniform(-4, -1)
        cands = []
        for name, bits in CANDIDATES:
            perturbation = weights * 4.0 ** (-bits) * rng.uniform(0.8, 1.2)
            damage = trace / weights * perturbation / 2
            nbytes = math.ceil(weights * bits / 8) + rows_out * 2
            cands.append({"candidate": name, "damage": damage, "raw_damage": damage, "bytes": nbytes,
                          "bits_per_weight": nbytes * 8 / weights, "perturbation": perturbation})
        rows.append({"name": f"blocks.{i // 4}.{['q', 'k', 'v', 'mlp'][i % 4]}", "kind": "linear",
                     "weight_shape": [rows_out, cols], "weights": weights, "mean": trace,
                     "ci_halfwidth": trace * rng.uniform(0.02, 0.2), "samples": 64, "converged": rng.random() > 0.05,
                     "candidates": cands})
    return {"version": 1, "metric": "hutchinson", "statistic": "hessian_trace", "loss": "cross_entropy",
            "candidates": [c for c, _ in CANDIDATES], "layers": rows, "calibration_samples": 128}


def hull_frontier(problem, *, points: int) -> dict:
    """The frontier payload `compute_frontier` stores, its points `points` vertices of the hull."""
    hull = lower_convex_hull(problem, "bytes")
    picks = sorted({round(i * (len(hull) - 1) / (points - 1)) for i in range(points)})

    def from_hull(problem, cost, points, **_):
        return Frontier(cost=cost, points=[hull[i] for i in picks])

    with mock.patch.object(service_frontiers, "frontier", from_hull):
        return compute_frontier(problem, cost="bytes", points=points)


def insert_synthetic_analysis(database_url: str, *, layers: int = 500, points: int = 200, seed: int = 0,
                              grouping: str = "layer") -> str:
    """A succeeded analysis of a `layers`-layer model with its `points`-point bytes frontier stored;
    `grouping` "block" makes each `blocks.N` (four layers) one decision unit, as the analysis would."""
    table = synthetic_table(layers, seed=seed)
    if grouping != "layer":
        units = group_layers([row["name"] for row in table["layers"]], grouping)
        table["groups"] = {unit: members for unit, members in units.items() if members != [unit]}
    parsed = SensitivityTable.from_dict(table)
    problem = parsed.to_problem()
    if grouping != "layer":  # as the service parses a stored problem: with its units' layers
        problem = StoredProblem(units=problem.units, ties=problem.ties,
                                groups={unit: tuple(members) for unit, members in parsed.groups.items()})
    frontier = hull_frontier(problem, points=points)
    with session_scope(database_url) as session:
        model = ModelRecord(
            name=f"synthetic-{layers}", sha256="0" * 64, format="safetensors", architecture=None, hyperparams=None,
            size_bytes=sum(r["weights"] for r in table["layers"]) * 4,
            layers=[{"name": r["name"], "kind": r["kind"], "weight_shape": r["weight_shape"], "parameters": r["weights"]}
                    for r in table["layers"]],
        )
        session.add(model)
        session.flush()
        now = utcnow()
        analysis = AnalysisRecord(
            model_id=model.id, dataset_id=None, candidates=table["candidates"], metric="hutchinson", options={},
            seed=seed, status="succeeded", progress=1.0, message="done", attempts=1, table=table,
            problem=parsed.stored_problem() if grouping != "layer" else problem_to_dict(problem),
            started_at=now, finished_at=now,
        )
        session.add(analysis)
        session.flush()
        session.add(FrontierRecord(analysis_id=analysis.id, cost="bytes", points_requested=points, data=frontier,
                                   solve_seconds=frontier["solve_seconds"]))
        return analysis.id
