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
            operations = len(client.app.openapi()["paths"]) or 1
            per_op = max(1, -(-args.cases // operations))
            started = time.monotonic()
            report = fuzz_app(client.app, headers=headers, examples=per_op, heavy_examples=max(1, per_op // 2),
                              seed=args.seed, ids=ids)
            elapsed = time.monotonic() - started
    print(f"seed {report.seed}: {report.total} cases over {len(report.counts)} operations in {elapsed:.0f} s "
          f"({per_op} per operation, {max(1, per_op // 2)} for {', '.join(HEAVY)})")
    for label, count in sorted(report.counts.items()):
        print(f"  {count:6d}  {label}")
    print(f"server errors: {len(report.server_errors)}")
    for line in report.server_errors[:20]:
        print("  " + line)
    print(f"operations with a failed check: {len(report.failures)}")
    for label, failure in report.failures.items():
        print(f"  {label}: {failure[:800]}")
    return 1 if report.server_errors or report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
