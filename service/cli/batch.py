"""`bitplan batch FILE`: many models × datasets × candidates × budgets, submitted, followed and summarised.

The file is YAML (a list, or {"jobs": [...]}) or JSONL (one job per line), each job:

    model: path/to/model.safetensors     # or a .pt2; paths are relative to the batch file
    spec: {architecture: mlp, hyperparams: {...}}   # for safetensors
    dataset: path/to/calibration.safetensors        # optional
    candidates: [int4, int8]                         # optional
    metric: hutchinson                               # optional
    options: {max_probes: 64}                        # optional, the analysis's options
    budgets: [4, {avg_bits: 3}, "bytes=20000", {avg_bits: 4, latency_ms: 3}]

A budget is a bare number (avg_bits), `COST=LIMIT` text as `bitplan solve --budget` takes, or an
object of budget words → limits that must all hold; the words are the solver's (`avg_bits`, alias
`average_bits`, `bytes`, any cost the analysis has). A misspelt key (`budget:`) is named with the
valid ones. `batch_schema()` is the JSON Schema of this file, served at GET /v1/schemas/batch.

Identical model and dataset files are uploaded once. Submissions the server refuses with 429 (this
token's concurrent-job limit) wait in line and are offered again as jobs finish, so a batch larger
than the limit still runs to the end. Exit status 1 when any job or plan failed.
"""

from __future__ import annotations

import difflib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from service.cli.client import ApiError, BitplanClient
from service.cli.commands import confidence_text, progress_line, warning_summary
from service.core.budgets import budget_limits, located_error
from solver._budget import AVG_BITS, BudgetError, parse_budget_text
from workers.metrics import DEFAULT_METRIC

__all__ = ["BatchJob", "load_batch", "run_batch", "BatchError", "batch_schema"]

TERMINAL = ("succeeded", "failed", "cancelled")


class BatchError(ValueError):
    """The batch file is unreadable or an entry is invalid; the message names the entry and field."""


class BatchJob(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str | None = None
    model: Path
    spec: dict[str, Any] | None = None
    dataset: Path | None = None
    candidates: list[str] | None = None
    metric: str = DEFAULT_METRIC
    seed: int = 0
    options: dict[str, Any] = Field(default_factory=dict)
    budgets: list[dict[str, float] | float | str] = Field(
        default_factory=list, description="Each a number (avg_bits), 'COST=LIMIT' text, or {word: limit, ...}.")

    @field_validator("budgets", mode="before")
    @classmethod
    def _budgets(cls, value: Any) -> Any:
        """Each budget read by the solver's one parser (service.core.budgets), so its errors name the
        budget and word (`budgets.0.avg_bits`) in the API's words."""
        if not isinstance(value, list):
            return value
        out = []
        for i, b in enumerate(value):
            try:
                if isinstance(b, (int, float)):  # a bool too: the parser refuses it as a limit
                    b = {AVG_BITS: b}
                elif isinstance(b, str):
                    b = dict([parse_budget_text(b)])
            except BudgetError as exc:
                raise located_error(exc, title=cls.__name__, at=(i,), value=b) from None
            out.append(budget_limits(b, title=cls.__name__, at=(i,)))
        return out


KEYS = tuple(BatchJob.model_fields)


def batch_schema() -> dict[str, Any]:
    """The JSON Schema of a batch file: a list of jobs, or {"jobs": [...]}."""
    job = BatchJob.model_json_schema()
    job["properties"]["model"]["description"] = "a .safetensors (with spec) or .pt2 file, relative to the batch file"
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "bitplan batch file",
        "description": "YAML (a list of jobs or {jobs: [...]}) or JSONL (one job per line); see `bitplan batch --help`.",
        "$defs": {"job": job},
        "oneOf": [
            {"type": "array", "items": {"$ref": "#/$defs/job"}, "minItems": 1},
            {"type": "object", "properties": {"jobs": {"type": "array", "items": {"$ref": "#/$defs/job"}, "minItems": 1}},
             "required": ["jobs"], "additionalProperties": False},
        ],
    }


def _unknown_keys(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return None
    for key in entry:
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return f"unknown key {key!r}{hint}; valid keys: {', '.join(KEYS)}"
    return None


def load_batch(path: Path) -> list[BatchJob]:
    path = Path(path)
    text = path.read_text()
    try:
        if path.suffix in (".jsonl", ".ndjson"):
            raw = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            raw = yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise BatchError(f"{path}: not valid {'JSONL' if path.suffix != '.yaml' else 'YAML'}: {exc}") from exc
    if isinstance(raw, dict) and "jobs" in raw:
        extra = [k for k in raw if k != "jobs"]
        if extra:
            raise BatchError(f"{path}: unknown top-level key {extra[0]!r}; a batch file is a list of jobs or {{jobs: [...]}}")
        raw = raw["jobs"]
    elif isinstance(raw, dict) and raw:
        close = difflib.get_close_matches(next(iter(raw), ""), ["jobs"], n=1)
        if close or not set(raw) & set(KEYS):
            raise BatchError(f"{path}: unknown top-level key {next(iter(raw))!r}"
                             f"{' (did you mean ' + repr(close[0]) + '?)' if close else ''}; a batch file is a list of"
                             " jobs or {jobs: [...]}")
        raw = [raw]  # one job written as a mapping
    if not isinstance(raw, list) or not raw:
        raise BatchError(f"{path}: expected a non-empty list of jobs")
    jobs = []
    for i, entry in enumerate(raw):
        unknown = _unknown_keys(entry)
        if unknown:
            raise BatchError(f"job {i + 1}: {unknown}")
        try:
            job = BatchJob.model_validate(entry)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "entry"
            raise BatchError(f"job {i + 1}: {where}: {first['msg']}") from exc
        job.model = (path.parent / job.model).resolve()
        job.dataset = (path.parent / job.dataset).resolve() if job.dataset else None
        job.name = job.name or f"{i + 1}:{job.model.stem}"
        jobs.append(job)
    return jobs


@dataclass
class _Run:
    job: BatchJob
    state: dict[str, Any] | None = None
    error: str | None = None
    plans: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.error and self.state is None:
            return "failed"
        return self.state["status"] if self.state else "waiting"


class _Board:
    """One line per job: redrawn in place on a terminal, a line per status change in a log."""

    def __init__(self, runs: list[_Run], out: TextIO):
        self.runs = runs
        self.out = out
        self.tty = out.isatty()
        self.drawn = 0
        self.seen: dict[int, str] = {}
        self.width = max(len(r.job.name) for r in runs)

    def line(self, run: _Run) -> str:
        label = f"{run.job.name:<{self.width}}  "
        if run.state is None:
            return f"{label}{run.error or 'waiting to be submitted'}"
        return progress_line(run.state, label=label)

    def draw(self) -> None:
        if self.tty:
            if self.drawn:
                self.out.write(f"\x1b[{self.drawn}F")
            for run in self.runs:
                self.out.write("\x1b[2K" + self.line(run) + "\n")
            self.drawn = len(self.runs)
        else:
            for i, run in enumerate(self.runs):
                if self.seen.get(i) != run.status:
                    self.seen[i] = run.status
                    self.out.write(self.line(run) + "\n")
        self.out.flush()


def _upload_all(client: BitplanClient, jobs: list[BatchJob], runs: list[_Run]) -> dict[int, tuple[str, str | None]]:
    models: dict[tuple[str, str], str] = {}
    datasets: dict[str, str] = {}
    ids: dict[int, tuple[str, str | None]] = {}
    for i, job in enumerate(jobs):
        try:
            key = (str(job.model), json.dumps(job.spec, sort_keys=True))
            if key not in models:
                spec = job.spec or {}
                models[key] = client.upload_model(job.model, architecture=spec.get("architecture"),
                                                  hyperparams=spec.get("hyperparams"))["id"]
            dataset_id = None
            if job.dataset:
                if str(job.dataset) not in datasets:
                    datasets[str(job.dataset)] = client.upload_dataset(job.dataset)["id"]
                dataset_id = datasets[str(job.dataset)]
            ids[i] = (models[key], dataset_id)
        except (ApiError, OSError) as exc:
            runs[i].error = f"upload: {exc}"
    return ids


def run_batch(client: BitplanClient, jobs: list[BatchJob], *, poll: float = 1.0, timeout: float = 6 * 3600,
              progress: TextIO | None = None, out: TextIO | None = None) -> int:
    """Submit, follow and plan every job; print the summary table to `out`. Returns the exit status."""
    progress, out = progress or sys.stderr, out or sys.stdout
    runs = [_Run(job) for job in jobs]
    board = _Board(runs, progress)
    ids = _upload_all(client, jobs, runs)
    waiting = [i for i in range(len(jobs)) if i in ids]
    deadline = time.monotonic() + timeout
    while True:
        while waiting:  # offer queued submissions until the server says "not now"
            i = waiting[0]
            job = jobs[i]
            try:
                runs[i].state = client.start_analysis(
                    ids[i][0], dataset_id=ids[i][1], candidates=job.candidates, metric=job.metric, seed=job.seed,
                    options=job.options, retry=False)
            except ApiError as exc:
                if exc.status == 429:
                    runs[i].error = "waiting: concurrent-job limit reached"
                    break
                runs[i].error = f"submit: {exc}"
            waiting.pop(0)
        for run in runs:
            if run.state is not None and run.state["status"] not in TERMINAL:
                try:
                    run.state = client.analysis(run.state["id"])
                except ApiError as exc:
                    run.error = str(exc)
        board.draw()
        active = [r for r in runs if r.state is not None and r.state["status"] not in TERMINAL]
        if not active and not waiting:
            break
        if time.monotonic() > deadline:
            for r in active:
                r.error = f"still {r.state['status']} after {timeout:.0f} s"
            break
        time.sleep(poll)

    for run in runs:
        if run.state is None or run.state["status"] != "succeeded":
            continue
        for budget in run.job.budgets:
            try:
                plan = client.plan(run.state["id"], budget=budget)
                run.plans.append({"budget": budget, "plan": plan})
            except ApiError as exc:
                run.plans.append({"budget": budget, "error": exc.detail})
    out.write(summary_table(runs) + "\n")
    failed = [r for r in runs if r.status != "succeeded" or any("error" in p for p in r.plans)]
    return 1 if failed else 0


def summary_table(runs: list[_Run]) -> str:
    rows = [("job", "status", "analysis", "budget", "bytes", "avg bits", "damage", "confidence", "warnings")]
    for run in runs:
        ident = run.state["id"] if run.state else "-"
        status = run.status
        if run.status != "succeeded":
            detail = (run.state or {}).get("error") or run.error or ""
            rows.append((run.job.name, status, ident, detail[:60], "", "", "", "", ""))
            continue
        if not run.plans:
            rows.append((run.job.name, status, ident, "(no budgets)", "", "", "", "",
                         warning_summary((run.state or {}).get("warnings"))))
        for p in run.plans:
            budget = ", ".join(f"{k}={v:g}" for k, v in p["budget"].items())
            if "error" in p:
                rows.append((run.job.name, "plan failed", ident, budget, p["error"][:60], "", "", "", ""))
            else:
                plan = p["plan"]
                rows.append((run.job.name, status, ident, budget, f"{plan['total_bytes']:.0f}",
                             f"{plan['average_bits']:.3f}", f"{plan['predicted_damage']:.4g}", confidence_text(plan),
                             warning_summary(plan.get("warnings"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(args) -> int:
    from service.cli.commands import client_from

    try:
        jobs = load_batch(Path(args.file))
    except (BatchError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import httpx

    with client_from(args) as client:
        if not client.health():
            print(f"error: cannot reach the server at {args.url}; is `bitplan serve` running? (--url / BITPLAN_URL)",
                  file=sys.stderr)
            return 2
        try:
            return run_batch(client, jobs, poll=args.poll, timeout=args.timeout)
        except httpx.TransportError as exc:
            print(f"error: lost the server at {args.url} ({exc.__class__.__name__}: {exc})", file=sys.stderr)
            return 2
