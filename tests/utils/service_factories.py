"""Factories for API tests: a trained digits model and files shaped like real uploads."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

from fastapi.testclient import TestClient

from service.api.app import create_app
from service.config import Settings


def make_client(tmp_path: Path, database_url: str | None = None, *, run_jobs: bool = True,
                **overrides) -> TestClient:
    """The app under a TestClient; `overrides` are settings (auth="on", rate_limit_per_s=...)."""
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, _env_file=None, **overrides)
    return TestClient(create_app(settings, run_jobs=run_jobs))


def issue_token(client: TestClient, *scopes: str, name: str = "test") -> str:
    """A token's secret, created straight in the app's database (as `bitplan token create` does)."""
    from service.storage import tokens
    from service.storage.db.session import session_scope

    with session_scope(client.app.state.settings.resolved_database_url) as session:
        return tokens.create_token(session, name=name, scopes=list(scopes)).secret


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def upload_model(client: TestClient, digits, **overrides):
    spec = overrides.pop("spec", {"architecture": digits.architecture, "hyperparams": digits.hyperparams})
    with open(digits.weights_path, "rb") as f:
        return client.post("/v1/models", files={"file": ("m.safetensors", f)},
                           data={"spec": json.dumps(spec), **overrides})


def upload_dataset(client: TestClient, path: Path):
    with open(path, "rb") as f:
        return client.post("/v1/datasets", files={"file": ("d.safetensors", f)})


def table_numbers(table: dict) -> dict[str, float | None]:
    """Every number of a `GET /v1/analyses/{id}/table` answer that the solver and the confidence
    intervals read, keyed by layer and candidate: two tables are the same when these are."""
    out: dict[str, float | None] = {}
    for row in table["layers"]:
        out[f"{row['layer']} mean"] = row["statistics"]["mean"]
        out[f"{row['layer']} ci"] = row["statistics"]["ci_halfwidth"]
        for cell in row["candidates"]:
            for key in ("damage", "raw_damage", "damage_ci"):
                out[f"{row['layer']} {cell['candidate']} {key}"] = cell.get(key, cell["details"].get(key))
    return out


def zipped(directory: Path, *, top: str | None = "model") -> bytes:
    """A model directory as the zip a user uploads (under `top/`, or at the root with top=None)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                arc = path.relative_to(directory).as_posix()
                zf.write(path, f"{top}/{arc}" if top else arc)
    return buf.getvalue()
