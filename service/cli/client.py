"""A small typed HTTP client for pipelines; the CLI and the demo are built on it."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from workers.metrics import DEFAULT_METRIC


class ApiError(Exception):
    """The server answered with an error; `status` and `detail` are what it said."""

    def __init__(self, status: int, detail: str, body: Any = None):
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail
        self.body = body


class BitplanClient:
    """Every POST carries an Idempotency-Key, so a POST retried after a 429/503 or a lost connection
    has its effect once; `retries` bounds how often (Retry-After is honoured up to `max_wait` s).
    `http` lets tests pass an httpx.Client of their own (e.g. FastAPI's TestClient)."""

    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 120.0,
                 retries: int = 3, max_wait: float = 30.0, http: httpx.Client | None = None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.max_wait = max_wait
        if http is not None:
            http.headers.update(headers)
        self._http = http or httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "BitplanClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                body = response.json()
                detail = body.get("detail", response.text) if isinstance(body, dict) else response.text
            except ValueError:
                body, detail = None, response.text
            raise ApiError(response.status_code, str(detail), body)
        return response.json()

    def _post(self, path: str, *, json_body: Any = None, file: Path | None = None, data: dict | None = None,
              retry: bool = True) -> Any:
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        attempt = 0
        while True:
            try:
                if file is not None:
                    with open(file, "rb") as f:
                        r = self._http.post(path, files={"file": (Path(file).name, f)}, data=data or {},
                                            headers=headers)
                else:
                    r = self._http.post(path, json=json_body, headers=headers)
            except httpx.TransportError:
                if not retry or attempt >= self.retries:
                    raise
                r = None
            transient = r is None or r.status_code in (429, 503) or (
                r.status_code == 409 and "Idempotency-Key" in r.text)  # the same request still in flight
            if r is not None and (not transient or not retry or attempt >= self.retries):
                return self._json(r)
            wait = 2.0 ** attempt
            if r is not None and r.headers.get("retry-after", "").isdigit():
                wait = float(r.headers["retry-after"])
            if wait > self.max_wait:
                return self._json(r)
            attempt += 1
            time.sleep(wait)

    def health(self) -> bool:
        try:
            return self._http.get("/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def upload_model(self, path: Path, *, architecture: str | None = None, hyperparams: dict | None = None,
                     name: str | None = None) -> dict[str, Any]:
        data: dict[str, str] = {}
        if architecture is not None:
            data["spec"] = json.dumps({"architecture": architecture, "hyperparams": hyperparams or {}})
        if name:
            data["name"] = name
        return self._post("/v1/models", file=Path(path), data=data)

    def upload_dataset(self, path: Path, *, name: str | None = None) -> dict[str, Any]:
        return self._post("/v1/datasets", file=Path(path), data={"name": name} if name else {})

    def start_analysis(self, model_id: str, *, dataset_id: str | None = None, candidates: list[str] | None = None,
                       metric: str = DEFAULT_METRIC, seed: int = 0, options: dict | None = None,
                       retry: bool = True) -> dict[str, Any]:
        """Submit; with retry=False a 429 (rate or concurrent-job limit) is raised at once as ApiError."""
        body = {"model_id": model_id, "dataset_id": dataset_id, "metric": metric, "seed": seed,
                "options": options or {}}
        if candidates is not None:
            body["candidates"] = candidates
        return self._post("/v1/analyses", json_body=body, retry=retry)

    def list_analyses(self, *, limit: int = 100) -> list[dict[str, Any]]:
        return self._json(self._http.get("/v1/analyses", params={"limit": limit}))

    def analysis(self, analysis_id: str) -> dict[str, Any]:
        return self._json(self._http.get(f"/v1/analyses/{analysis_id}"))

    def wait(self, analysis_id: str, *, poll: float = 0.5, timeout: float = 3600,
             on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Poll until the analysis ends; returns its final state (succeeded, failed or cancelled)."""
        return self._wait_job(f"/v1/analyses/{analysis_id}", f"analysis {analysis_id}", poll=poll,
                              timeout=timeout, on_progress=on_progress)

    def _wait_job(self, path: str, what: str, *, poll: float, timeout: float,
                  on_progress: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            state = self._json(self._http.get(path))
            if on_progress:
                on_progress(state)
            if state["status"] in ("succeeded", "failed", "cancelled"):
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} still {state['status']} after {timeout} s")
            time.sleep(poll)

    def table(self, analysis_id: str) -> dict[str, Any]:
        return self._json(self._http.get(f"/v1/analyses/{analysis_id}/table"))

    def plan(self, analysis_id: str, *, avg_bits: float | None = None, bytes: float | None = None,
             budget: dict[str, float] | None = None, backend: str = "auto",
             average_bits: float | None = None) -> dict[str, Any]:
        """Solve for a budget: `avg_bits` / `bytes`, and/or any `budget` mapping of cost words to limits
        (e.g. {"latency_ms": 3}); `average_bits` is the alias of `avg_bits`."""
        limits = dict(budget or {})
        for word, value in (("avg_bits", avg_bits if avg_bits is not None else average_bits), ("bytes", bytes)):
            if value is not None:
                limits[word] = value
        return self._post(f"/v1/analyses/{analysis_id}/plans", json_body={"budget": limits, "backend": backend})

    def given_plan(self, analysis_id: str, assignment: dict[str, str]) -> dict[str, Any]:
        """Store a plan you chose (unit → candidate): the server checks it and adds the table's sums."""
        return self._post(f"/v1/analyses/{analysis_id}/plans", json_body={"assignment": assignment})

    def frontier(self, analysis_id: str, *, cost: str = "bytes", points: int = 50) -> dict[str, Any]:
        return self._json(self._http.get(f"/v1/analyses/{analysis_id}/frontier",
                                         params={"cost": cost, "points": points}))

    def export(self, plan_id: str, *, export_format: str = "json") -> tuple[bytes, str, list[str]]:
        """(content, the server's file name, its warnings) of a plan exported for an engine."""
        r = self._http.get(f"/v1/plans/{plan_id}/export", params={"format": export_format})
        if r.status_code >= 400:
            self._json(r)
        disposition = r.headers.get("content-disposition", "")
        name = f"{plan_id}.{export_format}"
        if 'filename="' in disposition:
            name = disposition.split('filename="', 1)[1].rstrip('"')
        warnings = [w for w in r.headers.get("x-bitplan-export-warnings", "").split(" | ") if w]
        return r.content, Path(name).name, warnings

    def export_job(self, plan_id: str, target: Path, *, export_format: str, poll: float = 0.5,
                   timeout: float = 3600, on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Build an export in a job (formats that open the model), wait for it and stream its file to
        `target` (via `target.part`, so nothing half-written has the asked name); the final export record."""
        record = self._post(f"/v1/plans/{plan_id}/exports", json_body={"format": export_format})
        final = self._wait_job(f"/v1/exports/{record['id']}", f"export {record['id']}", poll=poll,
                               timeout=timeout, on_progress=on_progress)
        if final["status"] != "succeeded":
            raise ApiError(409, f"export {record['id']} {final['status']}: {final.get('error') or 'no file'}", final)
        partial = target.with_name(target.name + ".part")
        try:
            with self._http.stream("GET", f"/v1/exports/{record['id']}/file") as r:
                if r.status_code >= 400:
                    r.read()
                    self._json(r)
                with open(partial, "wb") as f:
                    for chunk in r.iter_bytes():
                        f.write(chunk)
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        return final

    def get_plan(self, plan_id: str) -> dict[str, Any]:
        return self._json(self._http.get(f"/v1/plans/{plan_id}"))
