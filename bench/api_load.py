"""Load over HTTP on loopback: latency of re-solving a cached analysis for new budgets, and submissions/s.

Starts `bitplan serve` on 127.0.0.1 (SQLite, in-process runner) in a temporary directory, trains the
digits model, runs one analysis, then measures. Bounded in count and time; stops the server itself.
The burst run opens `--burst` connections at once, each sending `--burst-rounds` re-solves, while a
prober asks /healthz every 50 ms: a request unanswered after `--hang-s` is a hang.

    .venv/bin/python bench/api_load.py [--plans 300] [--submissions 200] [--concurrency 4] [--seconds 60]
                                       [--burst 200] [--burst-rounds 3] [--hang-s 30]

Targets: p95 of a re-solve under 100 ms; in the burst 0 hangs and /healthz always under 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.cli.client import BitplanClient  # noqa: E402


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


def _burst(url: str, path: str, *, clients: int, rounds: int, hang_s: float) -> dict:
    """`clients` connections at once, `rounds` re-solves each; /healthz probed throughout."""
    latencies: list[float] = []
    outcomes = {"ok": 0, "refused": 0, "refused_without_retry_after": 0, "error": 0, "hang": 0}
    samples: list[str] = []  # what the first few non-2xx answers said
    health: list[float] = []
    health_failures = [0]
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=url, timeout=hang_s) as http:
            while not done.is_set():
                t0 = time.perf_counter()
                try:
                    ok = http.get("/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                health.append(time.perf_counter() - t0)
                health_failures[0] += not ok
                time.sleep(0.05)

    async def client(http: httpx.AsyncClient, rng: random.Random, start: asyncio.Event) -> None:
        await start.wait()
        for _ in range(rounds):
            t0 = time.perf_counter()
            try:
                r = await http.post(path, json={"budget": {"average_bits": round(rng.uniform(3.0, 8.0), 4)}})
            except httpx.TimeoutException:
                outcomes["hang"] += 1
                continue
            except httpx.HTTPError as exc:
                outcomes["error"] += 1
                samples.append(f"{exc.__class__.__name__}: {exc}"[:200])
                continue
            if r.status_code >= 300 and len(samples) < 5:
                samples.append(f"{r.status_code} {r.text[:200]}")
            if r.status_code < 300:
                latencies.append(time.perf_counter() - t0)
                outcomes["ok"] += 1
            elif r.status_code in (429, 503):
                outcomes["refused" if "retry-after" in r.headers else "refused_without_retry_after"] += 1
            else:
                outcomes["error"] += 1

    async def run() -> float:
        # No keep-alive: a pooled connection idle past uvicorn's keep-alive timeout races its close
        # (a client-side ReadError that says nothing about the server).
        limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=url, timeout=hang_s, limits=limits) as http:
            start = asyncio.Event()
            tasks = [asyncio.create_task(client(http, random.Random(i), start)) for i in range(clients)]
            t0 = time.perf_counter()
            start.set()
            await asyncio.gather(*tasks)
            return time.perf_counter() - t0

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    try:
        wall = asyncio.run(run())
    finally:
        done.set()
        prober.join(timeout=hang_s + 5)
    return {"latencies": latencies, "outcomes": outcomes, "health": health, "health_failures": health_failures[0],
            "wall": wall, "samples": samples}


@contextmanager
def _serving(data_dir: Path, **env_extra: str) -> Iterator[str]:
    """`bitplan serve` on a free loopback port over `data_dir` (SQLite, in-process runner)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "BITPLAN_DATA_DIR": str(data_dir), "BITPLAN_HOST": "127.0.0.1",
           "BITPLAN_PORT": str(port), "BITPLAN_AUTH": "auto", **env_extra}
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
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plans", type=int, default=300, help="re-solve requests (default 300)")
    ap.add_argument("--submissions", type=int, default=200, help="POST /v1/analyses requests (default 200)")
    ap.add_argument("--concurrency", type=int, default=min(4, os.cpu_count() or 1),
                    help="client threads (default: CPU cores, at most 4)")
    ap.add_argument("--seconds", type=float, default=60, help="time bound of each measurement (default 60)")
    ap.add_argument("--burst", type=int, default=200, help="connections of the burst run, all at once (default 200)")
    ap.add_argument("--burst-rounds", type=int, default=3, help="re-solves per burst connection (default 3)")
    ap.add_argument("--hang-s", type=float, default=30, help="unanswered this long counts as a hang (default 30)")
    ap.add_argument("--burst-threads", default="40,16,8",
                    help="api_threads of the server for each burst run, side by side (default 40,16,8)")
    args = ap.parse_args(argv)

    from workers.digits import train_digits

    with tempfile.TemporaryDirectory(prefix="bitplan-bench-") as tmp:
        tmp = Path(tmp)
        digits = train_digits(tmp / "digits", epochs=15, calibration_samples=128)
        with _serving(tmp / "data") as url:
            client = BitplanClient(url)
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
            for other in client.list_analyses(limit=1000):
                if other["id"] != analysis["id"] and other["status"] in ("queued", "running"):
                    httpx.post(f"{url}/v1/analyses/{other['id']}/cancel", timeout=30)  # no jobs under the burst
        bursts = []
        for threads in [int(t) for t in args.burst_threads.split(",") if t.strip()]:
            with _serving(tmp / "data", BITPLAN_API_THREADS=str(threads)) as url:
                httpx.post(url + path, json={"budget": {"average_bits": 4}}, timeout=30)  # parse the problem once
                bursts.append((threads, _burst(url, path, clients=args.burst, rounds=args.burst_rounds,
                                               hang_s=args.hang_s)))

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

    for threads, burst in bursts:
        _print_burst(args, threads, burst)
    return 0


def _print_burst(args, threads: int, burst: dict) -> None:
    out = burst["outcomes"]
    b_ms = [x * 1000 for x in burst["latencies"]] or [float("nan")]
    h_ms = [x * 1000 for x in burst["health"]] or [float("nan")]
    total = args.burst * args.burst_rounds
    print(f"\nburst, api_threads {threads}: {args.burst} connections at once x {args.burst_rounds} re-solves = "
          f"{total} requests in {burst['wall']:.1f} s")
    print(f"  answered 2xx {out['ok']}, 429/503 with Retry-After {out['refused']}, 429/503 without "
          f"{out['refused_without_retry_after']}, other errors {out['error']}, hangs (> {args.hang_s:g} s) {out['hang']}")
    for sample in burst["samples"]:
        print(f"  non-2xx answer: {sample}")
    print(f"  re-solve p50 {statistics.median(b_ms):.1f} ms, p95 {_percentile(b_ms, 95):.1f} ms, "
          f"max {max(b_ms):.1f} ms")
    print(f"  /healthz during the burst: {len(h_ms)} probes, failures {burst['health_failures']}, "
          f"p50 {statistics.median(h_ms):.1f} ms, max {max(h_ms):.1f} ms")
    ok = out["hang"] == 0 and burst["health_failures"] == 0 and max(h_ms) < 1000
    print(f"  target 0 hangs and /healthz < 1 s throughout: {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    sys.exit(main())
