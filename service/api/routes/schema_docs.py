"""/v1/schemas/{name}: JSON Schemas of the files users write for bitplan's tools (batch files), so an
editor or a pipeline can check one before running it. Public documents, like /openapi.json."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.cli.batch import batch_schema

router = APIRouter(prefix="/v1/schemas", tags=["schemas"])


@router.get("/batch")
def get_batch_schema() -> dict[str, Any]:
    """The JSON Schema of a `bitplan batch` file (YAML or JSONL)."""
    return batch_schema()
