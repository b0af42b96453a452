"""Factories for API tests: a trained digits model and files shaped like real uploads."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient

from service.api.app import create_app
from service.config import Settings


def make_client(tmp_path: Path, database_url: str | None = None) -> TestClient:
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, _env_file=None)
    return TestClient(create_app(settings))


def upload_model(client: TestClient, digits, **overrides):
    spec = overrides.pop("spec", {"architecture": digits.architecture, "hyperparams": digits.hyperparams})
    with open(digits.weights_path, "rb") as f:
        return client.post("/v1/models", files={"file": ("m.safetensors", f)},
                           data={"spec": json.dumps(spec), **overrides})


def upload_dataset(client: TestClient, path: Path):
    with open(path, "rb") as f:
        return client.post("/v1/datasets", files={"file": ("d.safetensors", f)})
