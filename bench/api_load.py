"""Load over HTTP on loopback: latency of re-solving a cached analysis for new budgets, and submissions/s.

Starts `bitplan serve` on 127.0.0.1 (SQLite, in-process runner) in a temporary directory, trains the
digits model, runs one analysis, then measures. Bounded in count and time; stops the server itself.

    .venv/bin/python bench/api_load.py [--plans 300] [--submissions 200] [--concurrency 4] [--seconds 60]

Target: p95 of a re-solve under 100 ms.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.client import BitplanClient  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def _hammer(url: str, make_request, *, count: int, seconds: float, concurrency: int) -> tuple[list[float], int, float]:
    """Run up to `count` requests (or until `seconds` pass) on `concurrency` threads; latencies of 2xx, errors."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    issued = [0]
    deadline = time.monotonic() + seconds

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=url, timeout=30) as http:
            while True:
                with lock:
                    if issued[0] >= count or time.monotonic() > deadline:
                        return
                    issued[0] += 1
                t0 = time.perf_counter()
                r = make_request(http, rng)
                dt = time.perf_counter() - t0
                with lock:
                    if r.status_code < 300:
                        latencies.append(dt)
                    else:
                        errors[0] += 1

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    return latencies, errors[0], time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plans", type=int, default=300, help="re-solve requests (default 300)")
    ap.add_argument("--submissions", type=int, default=200, help="POST /v1/analyses requests (default 200)")
    ap.add_argument("--concurrency", type=int, default=min(4, os.cpu_count() or 1),
                    help="client threads (default: CPU cores, at most 4)")
    ap.add_argument("--seconds", type=float, default=60, help="time bound of each measurement (default 60)")
    args = ap.parse_args(argv)

    from workers.digits import train_digits

    with tempfile.TemporaryDirectory(prefix="bitplan-bench-") as tmp:
        tmp = Path(tmp)
        digits = train_digits(tmp / "digits", epochs=15, calibration_samples=128)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "BITPLAN_DATA_DIR": str(tmp / "data"), "BITPLAN_HOST": "127.0.0.1",
               "BITPLAN_PORT": str(port), "BITPLAN_AUTH": "auto"}
        env.pop("BITPLAN_DATABASE_URL", None)
        env.pop("BITPLAN_REDIS_URL", None)
        server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1",
                                   "--port", str(port)], cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client = BitplanClient(url)
            deadline = time.monotonic() + 60
            while not client.health():
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("server did not start")
                time.sleep(0.2)
            model = client.upload_model(digits.weights_path, architecture=digits.architecture,
                                        hyperparams=digits.hyperparams)
            dataset = client.upload_dataset(digits.calibration_path)
            t0 = time.perf_counter()
            analysis = client.start_analysis(model["id"], dataset_id=dataset["id"])
            final = client.wait(analysis["id"], timeout=600)
            if final["status"] != "succeeded":
                raise SystemExit(f"analysis {final['status']}: {final['error']}")
            analysis_s = time.perf_counter() - t0
            path = f"/v1/analyses/{analysis['id']}/plans"
            httpx.post(url + path, json={"budget": {"average_bits": 4}}, timeout=30)  # parse the problem once

            def plan(http: httpx.Client, rng: random.Random) -> httpx.Response:
                return http.post(path, json={"budget": {"average_bits": round(rng.uniform(3.0, 8.0), 4)}})

            lat, plan_errors, plan_wall = _hammer(url, plan, count=args.plans, seconds=args.seconds,
                                                  concurrency=args.concurrency)
            body = {"model_id": model["id"], "dataset_id": dataset["id"], "candidates": ["int4", "int8"]}

            def submit(http: httpx.Client, rng: random.Random) -> httpx.Response:
                return http.post("/v1/analyses", json=body)

            sub_lat, sub_errors, sub_wall = _hammer(url, submit, count=args.submissions, seconds=args.seconds,
                                                    concurrency=args.concurrency)
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()

    ms = [x * 1000 for x in lat]
    sub_ms = [x * 1000 for x in sub_lat]
    rows = [
        ("measurement", "n", "errors", "p50 ms", "p95 ms", "p99 ms", "per s"),
        ("re-solve (POST …/plans)", str(len(ms)), str(plan_errors), f"{statistics.median(ms):.1f}",
         f"{_percentile(ms, 95):.1f}", f"{_percentile(ms, 99):.1f}", f"{len(ms) / plan_wall:.1f}"),
        ("submit (POST /v1/analyses)", str(len(sub_ms)), str(sub_errors), f"{statistics.median(sub_ms):.1f}",
         f"{_percentile(sub_ms, 95):.1f}", f"{_percentile(sub_ms, 99):.1f}", f"{len(sub_ms) / sub_wall:.1f}"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"loopback {url}, SQLite, concurrency {args.concurrency}; one analysis took {analysis_s:.1f} s")
    for i, r in enumerate(rows):
        print("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    p95 = _percentile(ms, 95)
    print(f"target p95 < 100 ms for a re-solve: {'met' if p95 < 100 else 'MISSED'} ({p95:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
