"""Idempotency-Key on every POST: a retried request gets the first response back instead of a second effect.

A pure ASGI middleware, so it serves JSON and multipart alike: it spools the body (memory, then disk),
hashes method, path, query, caller and body, and keeps one row per (caller, key) in the database:

- no row: insert it `in_flight`, run the request, store status, headers and body (the row is
  dropped instead for transient answers: 5xx, 401/403, 409, 429, and for exceptions, so a retry runs again);
- a row with the same hash: replay the stored response (`Idempotent-Replayed: true`), or 409 while the first
  is still in flight;
- a row with another hash: 422 naming the header; keys are per caller, so two tokens never collide.

Rows live `idempotency_ttl_s` (24 h); an in-flight row older than `STALE_IN_FLIGHT` belongs to a process
that died and is taken over. It needs the principal resolved by AuthenticationMiddleware (runs after it);
a request without a valid principal passes through untouched and is refused by the route.
"""

from __future__ import annotations

import hashlib
import tempfile
from datetime import timedelta
from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.storage import store
from service.config import Settings
from service.storage.db.session import session_scope

__all__ = ["IdempotencyMiddleware", "document_header", "HEADER"]

HEADER = "Idempotency-Key"
MAX_KEY = 200
STALE_IN_FLIGHT = timedelta(minutes=15)
MAX_STORED_BODY = 1 << 20
_SPOOL_MEMORY = 1 << 20
_KEPT_HEADERS = (b"content-type", b"location", b"retry-after")
_TRANSIENT = {401, 403, 408, 409, 425, 429}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, headers=headers,
                        content={"detail": f"{HEADER}: {message}", "field": HEADER})


def _boundary(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    ctype = next((v for k, v in headers if k == b"content-type"), b"")
    if not ctype.startswith(b"multipart/"):
        return None
    for param in ctype.split(b";")[1:]:
        name, _, value = param.strip().partition(b"=")
        if name.lower() == b"boundary" and value:
            return value.strip(b'"')
    return None


def _hash_body(spool, digest, boundary: bytes | None) -> None:
    """Hash the spooled body; a multipart boundary is hashed as a placeholder, because clients pick a
    random one per attempt and a retried upload must still count as the same request."""
    spool.seek(0)
    keep = len(boundary) - 1 if boundary else 0
    carry = b""
    while chunk := spool.read(1 << 16):
        buf = carry + chunk
        if boundary:
            buf = buf.replace(boundary, b"\0boundary\0")
        if len(buf) <= keep:
            carry = buf
            continue
        digest.update(buf[:len(buf) - keep])
        carry = buf[len(buf) - keep:]
    digest.update(carry)


def _begin(url: str, *, owner: str, key: str, request_hash: str, ttl_s: int) -> tuple[str, Any]:
    """('new', row id) | ('replay', row) | ('mismatch', None) | ('in_flight', None)."""
    for _ in range(2):
        with session_scope(url) as session:
            outcome = store.begin_idempotent(session, owner=owner, key=key, request_hash=request_hash, ttl_s=ttl_s,
                                             stale_after=STALE_IN_FLIGHT)
            if outcome is not None:  # None: a concurrent duplicate inserted it first, look again
                return outcome
    return "in_flight", None


def _finish(url: str, *, row_id: str, status: int, headers: dict[str, str], body: bytes) -> None:
    with session_scope(url) as session:
        store.finish_idempotent(session, row_id=row_id, status=status, headers=headers, body=body)


def _release(url: str, *, row_id: str) -> None:
    with session_scope(url) as session:
        store.release_idempotent(session, row_id=row_id)


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp, *, settings: Settings):
        self.app = app
        self.url = settings.resolved_database_url
        self.ttl_s = settings.idempotency_ttl_s
        self.max_body = settings.max_upload_bytes + (1 << 20)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        raw_key = next((v for k, v in scope["headers"] if k == b"idempotency-key"), None)
        principal = scope.get("state", {}).get("principal")
        if raw_key is None or principal is None:
            await self.app(scope, receive, send)
            return
        key = raw_key.decode("latin-1").strip()
        if not 1 <= len(key) <= MAX_KEY:
            await _error(422, f"must be 1 to {MAX_KEY} characters")(scope, receive, send)
            return

        spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_MEMORY)
        try:
            digest = hashlib.sha256()
            for part in (scope["method"], scope["path"], scope.get("query_string", b"").decode("latin-1"),
                         principal.owner):
                digest.update(part.encode() + b"\0")
            size = 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body:
                    await _error(413, "body too large to be held for replay")(scope, receive, send)
                    return
                spool.write(chunk)
                if not message.get("more_body", False):
                    break
            _hash_body(spool, digest, _boundary(scope["headers"]))
            outcome, found = await run_in_threadpool(
                _begin, self.url, owner=principal.owner, key=key, request_hash=digest.hexdigest(), ttl_s=self.ttl_s)
            if outcome == "mismatch":
                await _error(422, "this key was already used with a different request (method, path or body); "
                                  "use a new key for a new request")(scope, receive, send)
                return
            if outcome == "in_flight":
                await _error(409, "a request with this key is still in flight; retry when it has finished",
                             {"Retry-After": "1"})(scope, receive, send)
                return
            if outcome == "replay":
                await self._replay(found, send)
                return
            await self._run(scope, receive, send, spool, row_id=found)
        finally:
            spool.close()

    async def _replay(self, rec: IdempotencyRecord, send: Send) -> None:
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (rec.response_headers or {}).items()]
        body = rec.response_body or b""
        headers += [(b"content-length", str(len(body)).encode()), (b"idempotent-replayed", b"true")]
        await send({"type": "http.response.start", "status": rec.response_status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _run(self, scope: Scope, receive: Receive, send: Send, spool, *, row_id: str) -> None:
        spool.seek(0)
        body_done = False

        async def replay_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            chunk = spool.read(1 << 16)
            more = spool.tell() < size
            body_done = not more
            return {"type": "http.request", "body": chunk, "more_body": more}

        spool.seek(0, 2)
        size = spool.tell()
        spool.seek(0)
        captured: dict[str, Any] = {"status": 500, "headers": {}, "body": bytearray(), "too_big": False}

        async def capture_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                captured["status"] = message["status"]
                captured["headers"] = {k.decode("latin-1"): v.decode("latin-1")
                                       for k, v in message.get("headers", []) if k.lower() in _KEPT_HEADERS}
            elif message["type"] == "http.response.body" and not captured["too_big"]:
                captured["body"] += message.get("body", b"")
                captured["too_big"] = len(captured["body"]) > MAX_STORED_BODY
            await send(message)

        try:
            await self.app(scope, replay_receive, capture_send)
        except BaseException:
            await run_in_threadpool(_release, self.url, row_id=row_id)
            raise
        status = captured["status"]
        if status >= 500 or status in _TRANSIENT or captured["too_big"]:
            await run_in_threadpool(_release, self.url, row_id=row_id)
        else:
            await run_in_threadpool(_finish, self.url, row_id=row_id, status=status,
                                    headers=captured["headers"], body=bytes(captured["body"]))


def document_header(app: FastAPI) -> None:
    """List the optional Idempotency-Key header on every POST in the OpenAPI document."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        for item in schema.get("paths", {}).values():
            op = item.get("post")
            if op is None:
                continue
            params = op.setdefault("parameters", [])
            if not any(p.get("name") == HEADER for p in params):
                params.append({
                    "name": HEADER, "in": "header", "required": False,
                    "description": "Retry-safe POST: the same key with the same body returns the first response "
                                   "(24 h); with another body it is refused (422).",
                    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY},
                })
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
