"""Limits: request size before the body is read, requests in flight, request rate and concurrent jobs per token.

The rate limiter is a token bucket per API token held in this process's memory: with several API
replicas each enforces its own share, which bounds abuse without a round trip to shared storage on
every request. Anonymous callers (auth off, loopback only) are not rate limited. The concurrent-job
limit counts rows in the database, so it holds across replicas.
"""

from __future__ import annotations

import math
import threading
import time

from sqlalchemy.orm import Session
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.storage import store
from service.api.security import Principal
from service.errors import TooManyRequests

__all__ = ["TokenBucket", "BodySizeLimitMiddleware", "InFlightLimitMiddleware", "RateLimitMiddleware", "check_active_jobs"]

# Multipart framing and form fields around the file; JSON bodies of this API are far smaller.
MULTIPART_SLACK = 1 << 20
JSON_BODY_LIMIT = 1 << 20
ACTIVE_JOBS_RETRY_AFTER_S = 10


def _too_large(field: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=413, content={"detail": f"{field}: {message}", "field": field})


class BodySizeLimitMiddleware:
    """Refuse a POST whose declared Content-Length is over the limit before reading a byte of it.

    Uploads are still counted while streamed (service/storage/blobs.py), which covers chunked bodies.
    """

    def __init__(self, app: ASGIApp, *, max_upload_bytes: int):
        self.app = app
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            headers = dict(scope["headers"])
            raw = headers.get(b"content-length")
            if raw is not None:
                try:
                    length = int(raw)
                except ValueError:
                    await _too_large("content-length", "not an integer")(scope, receive, send)
                    return
                multipart = headers.get(b"content-type", b"").startswith(b"multipart/")
                limit = self.max_upload_bytes + MULTIPART_SLACK if multipart else JSON_BODY_LIMIT
                if length > limit:
                    field = "file" if multipart else "body"
                    await _too_large(field, f"request body of {length} bytes exceeds the limit of {limit} bytes")(
                        scope, receive, send)
                    return
        await self.app(scope, receive, send)


class InFlightLimitMiddleware:
    """503 with Retry-After at once when `limit` requests are already being handled, instead of letting
    an unbounded queue build up in front of the threads and the database pool.

    A request counts until its response starts: an event stream is long-lived but holds nothing while
    it waits between polls, so it stops counting once its headers are out. Public probes (/healthz,
    /readyz, /metrics) never count, so a load balancer still sees a live process under overload.
    """

    PROBES = ("/healthz", "/readyz", "/metrics")

    def __init__(self, app: ASGIApp, *, limit: int, retry_after_s: int = 1):
        self.app = app
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.in_flight = 0  # touched only on the event loop's thread

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.PROBES:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            response = JSONResponse(
                status_code=503, headers={"Retry-After": str(self.retry_after_s)},
                content={"detail": f"server: {self.limit} requests are in flight; retry in {self.retry_after_s} s",
                         "field": "server"},
            )
            await response(scope, receive, send)
            return
        self.in_flight += 1
        counted = True

        async def send_and_release(message: Message) -> None:
            nonlocal counted
            if message["type"] == "http.response.start" and counted:
                counted = False
                self.in_flight -= 1
            await send(message)

        try:
            await self.app(scope, receive, send_and_release)
        finally:
            if counted:
                self.in_flight -= 1


class TokenBucket:
    """`rate` tokens per second up to `burst`; thread-safe. take() returns 0 or the seconds until one is free."""

    def __init__(self, rate: float, burst: int):
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str, *, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            level, last = self._buckets.get(key, (float(self.burst), now))
            level = min(float(self.burst), level + (now - last) * self.rate)
            if level >= 1.0:
                self._buckets[key] = (level - 1.0, now)
                return 0.0
            self._buckets[key] = (level, now)
            return (1.0 - level) / self.rate


class RateLimitMiddleware:
    """429 with Retry-After once a token has spent its bucket; needs the principal from authentication."""

    def __init__(self, app: ASGIApp, *, rate: float, burst: int):
        self.app = app
        self.bucket = TokenBucket(rate, burst) if rate > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal: Principal | None = scope.get("state", {}).get("principal")
        if self.bucket is not None and scope["type"] == "http" and principal is not None and principal.token_id:
            wait = self.bucket.take(principal.token_id)
            if wait > 0:
                retry = max(1, math.ceil(wait))
                response = JSONResponse(
                    status_code=429, headers={"Retry-After": str(retry)},
                    content={"detail": f"authorization: request rate limit of {self.bucket.rate:g}/s reached for "
                                       f"this token; retry in {retry} s", "field": "authorization"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def check_active_jobs(session: Session, *, principal: Principal, limit: int) -> None:
    """Raise TooManyRequests when this token already has `limit` jobs (analyses, evaluations) queued or running."""
    if principal.token_id is None:
        return
    active = store.count_active_jobs(session, token_id=principal.token_id)
    if active >= limit:
        raise TooManyRequests(
            "token", f"{active} jobs of this token are queued or running (limit {limit}); "
                     "wait for one to finish", retry_after=ACTIVE_JOBS_RETRY_AFTER_S,
        )
