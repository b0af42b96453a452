"""The same sampled_gauss_newton analysis on 1 `bitplan worker` unsplit and on 2 workers as 2 shards
(options.shards), over real Redis + PostgreSQL: wall times side by side, their ratio, and whether the
tables are equal (issue 15 part 3's target).

Starts PostgreSQL and redis-server on loopback (as the tests do, tests/utils/servers.py), the API in this
process (TestClient, no runner of its own) and the workers as subprocesses; trains the digits MLP (or
the CNN) and analyses its calibration set. The wall time runs from the POST to the succeeded row, so
it includes what sharding adds: the fan-out, a job process per shard, and the merge (a job process that
loads the model, traces one sample and quantizes every layer, measuring nothing). `--draws` sets how
much work the shards split (the cost grows with samples × draws).

    .venv/bin/python bench/sharding.py [--architecture mlp|cnn] [--samples 256] [--draws 64] [--repeats 1]

On a machine with fewer free cores than workers the shards share the cores and the ratio says so.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fastapi.testclient import TestClient  # noqa: E402

from service.api.app import create_app  # noqa: E402
from tests.utils.queue_factories import Workers, queue_settings, wait_done, wait_until  # noqa: E402
from tests.utils.servers import start_postgres, start_redis  # noqa: E402
from tests.utils.service_factories import table_numbers, upload_dataset, upload_model  # noqa: E402
from workers.digits import train_digits  # noqa: E402


def _run(client: TestClient, model_id: str, dataset_id: str, options: dict, timeout: float) -> tuple[float, dict, str]:
    started = time.monotonic()
    r = client.post("/v1/analyses", json={"model_id": model_id, "dataset_id": dataset_id,
                                          "metric": "sampled_gauss_newton", "seed": 3, "options": options})
    assert r.status_code == 202, r.text
    final = wait_done(client, r.json()["id"], timeout=timeout)
    wall = time.monotonic() - started
    if final["status"] != "succeeded":
        raise SystemExit(f"analysis {final['id']} {final['status']}: {final['error']}")
    return wall, client.get(f"/v1/analyses/{final['id']}/table").json(), _phases(client, final["id"])


def _phases(client: TestClient, analysis_id: str) -> str:
    """Where the time went: each shard's measuring and its job's wall time, then the merge's job."""
    from service.storage import shards
    from service.storage.db.session import session_scope

    with session_scope(client.app.state.settings.resolved_database_url) as s:
        parts = [(r.sums["timings"]["measure_s"], (r.finished_at - r.started_at).total_seconds())
                 for r in shards.shards_of(s, analysis_id=analysis_id)]
    return ", ".join(f"shard {i + 1}: measure {m:.1f} s of {w:.1f} s" for i, (m, w) in enumerate(parts))


def _service(tmp: Path, postgres, redis, digits, workers: int):
    settings = queue_settings(tmp / f"w{workers}", postgres.create_database(f"bench_w{workers}"), redis.url)
    client = TestClient(create_app(settings)).__enter__()
    model = upload_model(client, digits).json()
    dataset = upload_dataset(client, digits.calibration_path).json()
    (tmp / f"w{workers}").mkdir(exist_ok=True)
    pool = Workers(settings, tmp / f"w{workers}")
    pool.start(workers)
    from redis import Redis
    from rq import Worker

    conn = Redis.from_url(redis.url)
    wait_until(lambda: len([w for w in Worker.all(connection=conn) if settings.rq_queue_name in w.queue_names()])
               == workers, 60, f"{workers} workers to register")
    return client, pool, model["id"], dataset["id"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--architecture", default="mlp", choices=("mlp", "cnn"))
    parser.add_argument("--samples", type=int, default=256, help="calibration samples")
    parser.add_argument("--draws", type=int, default=64, help="sampled labels per sample (the work split)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each setting (the fastest is shown)")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bitplan-bench-sharding-"))
    print(f"cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}; digits {args.architecture},"
          f" {args.samples} samples × {args.draws} draws")
    digits = train_digits(tmp / "digits", architecture=args.architecture, epochs=15,
                          calibration_samples=args.samples)
    postgres, redis = start_postgres(), start_redis()
    options = {"draws": args.draws, "groups": 16}
    results = {}
    try:
        for workers, shards in ((1, 1), (2, 2)):
            client, pool, model_id, dataset_id = _service(tmp, postgres, redis, digits, workers)
            try:
                runs = [_run(client, model_id, dataset_id, {**options, "shards": shards}, args.timeout)
                        for _ in range(args.repeats)]
            finally:
                pool.stop()
                client.__exit__(None, None, None)
            results[(workers, shards)] = min(runs, key=lambda run: run[0])
    finally:
        redis.stop()
        postgres.stop()

    (one, table_one, _), (two, table_two, phases) = results[(1, 1)], results[(2, 2)]
    measure_one = table_one["provenance"]["timings"]["measure_s"]
    merge = table_two["provenance"]["timings"]["total_s"]
    a, b = table_numbers(table_one), table_numbers(table_two)
    worst = max((abs(a[k] - b[k]) / abs(a[k]) for k in a if a[k]), default=0.0) if set(a) == set(b) else float("inf")
    print()
    print(f"{'setting':<28}{'wall s':>10}  where")
    print(f"{'1 worker, unsplit':<28}{one:>10.1f}  measure {measure_one:.1f} s")
    print(f"{'2 workers, 2 shards':<28}{two:>10.1f}  {phases}; merge {merge:.1f} s in its job process")
    print(f"ratio (2 workers / 1): {two / one:.2f}  (speed-up {one / two:.2f}×)")
    print(f"tables equal: {a == b} (largest relative difference {worst:.1e} over {len(a)} numbers)")
    return 0 if a == b else 1


if __name__ == "__main__":
    sys.exit(main())
