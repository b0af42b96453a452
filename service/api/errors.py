"""The API edge: domain errors become HTTP responses here and only here. Every body names the field."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from service.errors import (
    Conflict, Forbidden, InvalidInput, NotFound, StorageError, TooManyRequests, Unauthorized,
)
from service.redact import redact_paths
from solver.errors import InfeasibleBudget, ProblemError


def _loc(loc) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "form")]
    return ".".join(parts) or "body"


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        field = _loc(first.get("loc", ()))
        return JSONResponse(
            status_code=422,
            content={
                "detail": f"{field}: {first.get('msg')}",
                "field": field,
                "errors": [{"field": _loc(e.get("loc", ())), "message": e.get("msg")} for e in errors],
            },
        )

    @app.exception_handler(InvalidInput)
    async def _invalid(_: Request, exc: InvalidInput):
        # Whatever check raised it, the text a user sees never holds a server path (service.redact).
        return JSONResponse(status_code=exc.status,
                            content={"detail": redact_paths(str(exc)), "field": exc.field, **exc.extra})

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound):
        return JSONResponse(status_code=404, content={"detail": f"{exc.kind}_id: {exc}", "field": f"{exc.kind}_id"})

    @app.exception_handler(Conflict)
    async def _conflict(_: Request, exc: Conflict):
        return JSONResponse(status_code=409, content={"detail": exc.message})

    @app.exception_handler(InfeasibleBudget)
    async def _infeasible(_: Request, exc: InfeasibleBudget):
        return JSONResponse(
            status_code=422,
            content={"detail": f"budget: {exc}", "field": "budget", "minimums": exc.minimums,
                     "violated": list(exc.violated)},
        )

    @app.exception_handler(ProblemError)
    async def _problem(_: Request, exc: ProblemError):
        return JSONResponse(status_code=422, content={"detail": f"problem: {exc}", "field": "problem"})

    @app.exception_handler(StorageError)
    async def _storage(_: Request, exc: StorageError):
        return JSONResponse(status_code=503, content={"detail": "storage unavailable, try again"},
                            headers={"Retry-After": "5"})

    @app.exception_handler(Unauthorized)
    async def _unauthorized(_: Request, exc: Unauthorized):
        challenge = 'Bearer realm="bitplan"' + (f', error="{exc.error}"' if exc.error else "")
        return JSONResponse(status_code=401, content={"detail": exc.message, "field": "authorization"},
                            headers={"WWW-Authenticate": challenge})

    @app.exception_handler(Forbidden)
    async def _forbidden(_: Request, exc: Forbidden):
        return JSONResponse(
            status_code=403, content={"detail": f"authorization: {exc}", "field": "authorization", "scope": exc.scope},
            headers={"WWW-Authenticate": f'Bearer realm="bitplan", error="insufficient_scope", scope="{exc.scope}"'},
        )

    @app.exception_handler(TooManyRequests)
    async def _too_many(_: Request, exc: TooManyRequests):
        return JSONResponse(status_code=429, content={"detail": str(exc), "field": exc.field},
                            headers={"Retry-After": str(max(1, round(exc.retry_after)))})


def document(app: FastAPI) -> None:
    """Make the OpenAPI document describe the 422 body this API really sends (a string `detail` naming
    the field, `field`, and `errors`), not FastAPI's default list-of-errors shape."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        schema.setdefault("components", {}).setdefault("schemas", {})["HTTPValidationError"] = {
            "title": "HTTPValidationError", "type": "object", "required": ["detail"],
            "properties": {
                "detail": {"type": "string", "description": "`<field>: <message>`"},
                "field": {"type": "string"},
                "errors": {"type": "array", "items": {"type": "object", "properties": {
                    "field": {"type": "string"}, "message": {"type": "string"}}}},
            },
        }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
