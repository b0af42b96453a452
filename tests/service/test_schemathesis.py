"""Property-based fuzzing of every operation in the OpenAPI document, randomized (a new seed each run,
printed so a failure can be replayed with BITPLAN_FUZZ_SEED), as an admin so that every route runs past
authentication: no 5xx, responses match the schema. bench/fuzz_api.py runs the same for thousands of cases."""

from __future__ import annotations

import os

import pytest

from tests.utils.fuzzing import fuzz_app, seed_objects
from tests.utils.service_factories import bearer, issue_token, make_client

EXAMPLES, HEAVY_EXAMPLES = 40, 25
MIN_TOTAL = 650


@pytest.mark.slow
def test_every_operation_survives_generated_requests(tmp_path, digits):
    seed = int(os.environ["BITPLAN_FUZZ_SEED"]) if os.environ.get("BITPLAN_FUZZ_SEED") else None
    settings = dict(auth="on", rate_limit_per_s=0, allow_code_formats=True)
    with make_client(tmp_path, **settings) as client:  # runs the one analysis the real rows need
        headers = bearer(issue_token(client, "admin", name="fuzz"))
        assert client.get("/v1/analyses", headers=headers).status_code == 200  # the token is valid
        ids = seed_objects(client, headers, digits)
    # Fuzzing itself runs no jobs: generated analyses and evaluations stay queued.
    with make_client(tmp_path, run_jobs=False, **settings) as client:
        report = fuzz_app(client.app, headers=headers, examples=EXAMPLES, heavy_examples=HEAVY_EXAMPLES,
                          seed=seed, ids=ids)
    print(f"schemathesis (seed {report.seed}): {report.total} generated cases over {len(report.counts)} operations")
    assert report.server_errors == [], f"seed {report.seed}: {report.server_errors[:5]}"
    assert report.failures == {}, f"seed {report.seed}: {report.failures}"
    assert report.total >= MIN_TOTAL, report.counts
