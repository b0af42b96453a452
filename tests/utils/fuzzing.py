"""Schemathesis over every operation of the OpenAPI document, randomized, as an admin: shared by the CI test
(a bounded case count) and bench/fuzz_api.py (thousands of cases)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field

import schemathesis
from hypothesis import HealthCheck, given, seed as hypothesis_seed, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

# Uploads run checks (and a sandboxed child) on every generated body: fewer examples than the cheap operations.
HEAVY = ("POST /v1/models", "POST /v1/datasets")


@dataclass
class FuzzReport:
    seed: int
    counts: dict[str, int] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)  # "METHOD path -> status: body"
    failures: dict[str, str] = field(default_factory=dict)  # operation -> first failed check

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def fuzz_app(app, *, headers: Mapping[str, str], examples: int, heavy_examples: int,
             seed: int | None = None) -> FuzzReport:
    """Generated requests for every operation (event streams excepted: they never end by themselves).
    Every case is checked for 5xx and schema conformance; an operation's first failure is recorded and
    fuzzing goes on with the next operation."""
    report = FuzzReport(seed=random.randrange(2**32) if seed is None else seed)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    for result in schema.get_all_operations():
        op = result.ok()
        label = f"{op.method.upper()} {op.path}"
        if op.path.endswith("/events"):
            continue
        report.counts[label] = 0
        try:
            _fuzz_operation(op, label, report, headers, heavy_examples if label in HEAVY else examples)
        except Exception as exc:  # noqa: BLE001 - hypothesis re-raises the (shrunk) failing case
            report.failures[label] = f"{type(exc).__name__}: {str(exc)[:2000]}"
    return report


def _fuzz_operation(op, label: str, report: FuzzReport, headers: Mapping[str, str], examples: int) -> None:
    @hypothesis_seed(report.seed)
    @given(case=op.as_strategy())
    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    def run(case):
        report.counts[label] += 1
        response = case.call(headers=dict(headers))
        if response.status_code >= 500:
            report.server_errors.append(f"{label} -> {response.status_code}: {response.text[:300]}")
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

    run()
