"""Property-based fuzzing of every operation in the OpenAPI document: no 5xx, responses match the schema."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.utils.service_factories import make_client

# Uploads run checks on every generated body; keep them to fewer examples than the cheap operations.
EXAMPLES = {"POST /v1/models": 60, "POST /v1/datasets": 60}
DEFAULT_EXAMPLES = 100
MIN_TOTAL = 1000


def _fuzz(op, label: str, counts: dict[str, int]) -> None:
    @given(case=op.as_strategy())
    @settings(max_examples=EXAMPLES.get(label, DEFAULT_EXAMPLES), deadline=None, database=None,
              derandomize=True, suppress_health_check=list(HealthCheck))
    def run(case):
        counts[label] += 1
        case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])

    run()


@pytest.mark.slow
def test_every_operation_survives_generated_requests(tmp_path):
    with make_client(tmp_path) as client:
        schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
        counts: dict[str, int] = {}
        for result in schema.get_all_operations():
            op = result.ok()
            label = f"{op.method.upper()} {op.path}"
            if op.path.endswith("/events"):
                continue  # a server-sent event stream never ends by itself; covered by its own tests
            counts[label] = 0
            _fuzz(op, label, counts)
    total = sum(counts.values())
    print(f"schemathesis: {total} generated cases over {len(counts)} operations: {counts}")
    assert total >= MIN_TOTAL, counts
