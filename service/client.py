"""A small typed HTTP client for pipelines; the CLI and the demo are built on it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx


class ApiError(Exception):
    """The server answered with an error; `status` and `detail` are what it said."""

    def __init__(self, status: int, detail: str, body: Any = None):
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail
        self.body = body


class BitplanClient:
    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 120.0):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

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
        with open(path, "rb") as f:
            return self._json(self._http.post("/v1/models", files={"file": (Path(path).name, f)}, data=data))

    def upload_dataset(self, path: Path, *, name: str | None = None) -> dict[str, Any]:
        with open(path, "rb") as f:
            data = {"name": name} if name else {}
            return self._json(self._http.post("/v1/datasets", files={"file": (Path(path).name, f)}, data=data))

    def start_analysis(self, model_id: str, *, dataset_id: str | None = None, candidates: list[str] | None = None,
                       metric: str = "hutchinson", seed: int = 0, options: dict | None = None) -> dict[str, Any]:
        body = {"model_id": model_id, "dataset_id": dataset_id, "metric": metric, "seed": seed,
                "options": options or {}}
        if candidates is not None:
            body["candidates"] = candidates
        return self._json(self._http.post("/v1/analyses", json=body))

    def analysis(self, analysis_id: str) -> dict[str, Any]:
        return self._json(self._http.get(f"/v1/analyses/{analysis_id}"))

    def wait(self, analysis_id: str, *, poll: float = 0.5, timeout: float = 3600,
             on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Poll until the analysis ends; returns its final state (succeeded, failed or cancelled)."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.analysis(analysis_id)
            if on_progress:
                on_progress(state)
            if state["status"] in ("succeeded", "failed", "cancelled"):
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"analysis {analysis_id} still {state['status']} after {timeout} s")
            time.sleep(poll)

    def table(self, analysis_id: str) -> dict[str, Any]:
        return self._json(self._http.get(f"/v1/analyses/{analysis_id}/table"))

    def plan(self, analysis_id: str, *, average_bits: float | None = None, bytes: float | None = None,
             backend: str = "auto") -> dict[str, Any]:
        budget = {k: v for k, v in {"average_bits": average_bits, "bytes": bytes}.items() if v is not None}
        return self._json(self._http.post(f"/v1/analyses/{analysis_id}/plans",
                                          json={"budget": budget, "backend": backend}))

    def get_plan(self, plan_id: str) -> dict[str, Any]:
        return self._json(self._http.get(f"/v1/plans/{plan_id}"))
