"""Schemathesis against the whole API for thousands of randomized cases, as an admin (issue 12's
"0 server errors" target). The CI test (tests/service/test_schemathesis.py) runs the same with a bounded
count; this runs many more and prints the count, the seed and every server error. Half the cases name a
real model, dataset, analysis and plan (seeded first), so they reach past "not found".

    .venv/bin/python bench/fuzz_api.py --cases 5000 [--seed N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.utils.fuzzing import HEAVY, fuzz_app, seed_objects  # noqa: E402
from tests.utils.service_factories import bearer, issue_token, make_client  # noqa: E402
from workers.digits import train_digits  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5000, help="total generated cases to aim for (at least)")
    parser.add_argument("--seed", type=int, default=None, help="replay a run (default: a fresh random seed)")
    args = parser.parse_args()
    settings = dict(auth="on", rate_limit_per_s=0, allow_code_formats=True)
    with tempfile.TemporaryDirectory() as tmp:
        digits = train_digits(Path(tmp) / "digits", epochs=15, calibration_samples=128)
        with make_client(Path(tmp), **settings) as client:  # one real analysis and plan to aim at
            headers = bearer(issue_token(client, "admin", name="fuzz"))
            ids = seed_objects(client, headers, digits)
        with make_client(Path(tmp), run_jobs=False, **settings) as client:
            operations = sum(len(methods) for methods in client.app.openapi()["paths"].values()) or 1
            per_op = max(1, -(-args.cases // operations))
            started = time.monotonic()
            counts: dict[str, int] = {}
            server_errors: list[str] = []
            failures: dict[str, str] = {}
            seeds = []
            while sum(counts.values()) < args.cases:  # rounds with fresh seeds until the count is reached
                report = fuzz_app(client.app, headers=headers, examples=per_op, heavy_examples=max(1, per_op // 2),
                                  seed=None if args.seed is None else args.seed + len(seeds), ids=ids)
                seeds.append(report.seed)
                for label, count in report.counts.items():
                    counts[label] = counts.get(label, 0) + count
                server_errors += report.server_errors
                failures.update(report.failures)
            elapsed = time.monotonic() - started
    print(f"seeds {seeds}: {sum(counts.values())} cases over {len(counts)} operations in {elapsed:.0f} s "
          f"({per_op} per operation and round, {max(1, per_op // 2)} for {', '.join(HEAVY)})")
    for label, count in sorted(counts.items()):
        print(f"  {count:6d}  {label}")
    print(f"server errors: {len(server_errors)}")
    for line in server_errors[:20]:
        print("  " + line)
    print(f"operations with a failed check: {len(failures)}")
    for label, failure in failures.items():
        print(f"  {label}: {failure[:800]}")
    return 1 if server_errors or failures else 0


if __name__ == "__main__":
    sys.exit(main())
