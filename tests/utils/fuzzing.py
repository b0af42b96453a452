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


def seed_objects(client, headers: Mapping[str, str], digits) -> dict[str, str]:
    """A model, a dataset, a succeeded analysis and a plan, so that half the generated cases reach past
    "not found" into the code that works on real rows: {path or body parameter name: id}."""
    import time

    from tests.utils.service_factories import upload_dataset, upload_model

    client.headers.update(headers)
    model = upload_model(client, digits).json()["id"]
    dataset = upload_dataset(client, digits.calibration_path).json()["id"]
    r = client.post("/v1/analyses", json={"model_id": model, "dataset_id": dataset, "metric": "hutchinson",
                                          "options": {"min_probes": 8, "max_probes": 16, "probe_batch": 8}})
    analysis = r.json()["id"]
    deadline = time.monotonic() + 300
    while client.get(f"/v1/analyses/{analysis}").json()["status"] != "succeeded":
        if time.monotonic() > deadline:
            raise AssertionError(f"seed analysis did not succeed: {client.get(f'/v1/analyses/{analysis}').json()}")
        time.sleep(0.2)
    plan = client.post(f"/v1/analyses/{analysis}/plans", json={"budget": {"average_bits": 4}}).json()["id"]
    return {"model_id": model, "dataset_id": dataset, "analysis_id": analysis, "plan_id": plan}


def _with_real_ids(case, ids: Mapping[str, str], rng: random.Random) -> None:
    if not ids or rng.random() < 0.5:
        return
    for key in list(case.path_parameters or {}):
        if key in ids:
            case.path_parameters[key] = ids[key]
    if isinstance(case.body, dict):
        for key in list(case.body):
            if key in ids:
                case.body[key] = ids[key]


def fuzz_app(app, *, headers: Mapping[str, str], examples: int, heavy_examples: int,
             seed: int | None = None, ids: Mapping[str, str] | None = None) -> FuzzReport:
    """Generated requests for every operation (event streams excepted: they never end by themselves).
    Every case is checked for 5xx and schema conformance; an operation's first failure is recorded and
    fuzzing goes on with the next operation. With `ids`, half the cases name those real rows."""
    report = FuzzReport(seed=random.randrange(2**32) if seed is None else seed)
    rng = random.Random(report.seed)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    for result in schema.get_all_operations():
        op = result.ok()
        label = f"{op.method.upper()} {op.path}"
        if op.path.endswith("/events"):
            continue
        report.counts[label] = 0
        try:
            _fuzz_operation(op, label, report, headers, heavy_examples if label in HEAVY else examples,
                            lambda case: _with_real_ids(case, ids or {}, rng))
        except Exception as exc:  # noqa: BLE001 - hypothesis re-raises the (shrunk) failing case
            report.failures[label] = f"{type(exc).__name__}: {str(exc)[:2000]}"
    return report


def _fuzz_operation(op, label: str, report: FuzzReport, headers: Mapping[str, str], examples: int,
                    prepare) -> None:
    @hypothesis_seed(report.seed)
    @given(case=op.as_strategy())
    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    def run(case):
        report.counts[label] += 1
        prepare(case)
        response = case.call(headers=dict(headers))
        if response.status_code >= 500:
            report.server_errors.append(f"{label} -> {response.status_code}: {response.text[:300]}")
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

    run()
