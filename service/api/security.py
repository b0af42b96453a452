"""Who is calling: bearer tokens with scopes, and when the server insists on them.

Auth is decided once per app from settings: `auto` means on unless the server binds a loopback
address, because anything reachable from another machine must not be open. Turning it off on a
public address needs `auth_force_off` as well (e.g. behind a proxy that authenticates).

The principal is resolved once per request by `AuthenticationMiddleware` (the idempotency and rate
limit layers need it before routing) and checked by one dependency per router.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from service.storage import tokens
from service.config import Settings
from service.storage.db.models import LOCAL_OWNER
from service.storage.db.session import session_scope
from service.errors import Forbidden, Unauthorized

__all__ = [
    "Principal", "ANONYMOUS", "Caller", "is_loopback", "auth_required", "AuthenticationMiddleware",
    "get_principal", "get_caller", "require_scope", "require_method_scope",
]

# Shown in the OpenAPI document ("Authorize" in /docs); checking happens in the dependencies below.
bearer_scheme = HTTPBearer(auto_error=False, description="A token from `bitplan token create`.")


@dataclass(frozen=True)
class Principal:
    """The caller: a token (id, name, scopes), or the anonymous caller of a server without auth."""

    token_id: str | None
    name: str
    scopes: frozenset[str]

    @property
    def owner(self) -> str:
        """The key that scopes per-caller state (idempotency keys, rate buckets)."""
        return self.token_id or "anonymous"

    def has(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


ANONYMOUS = Principal(token_id=None, name="anonymous", scopes=frozenset(tokens.SCOPES))


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def auth_required(settings: Settings) -> bool:
    """Whether this server requires tokens; ValueError for auth off on a reachable address without force."""
    if settings.auth == "on":
        return True
    if settings.auth == "auto":
        return not is_loopback(settings.host)
    if not is_loopback(settings.host) and not settings.auth_force_off:
        raise ValueError(
            f"auth: refusing to serve without authentication on {settings.host!r}, which is reachable beyond "
            "this machine; use BITPLAN_AUTH=auto|on, bind 127.0.0.1, or set BITPLAN_AUTH_FORCE_OFF=true"
        )
    return False


def _lookup(url: str, secret: str) -> Principal | None:
    with session_scope(url) as session:
        rec = tokens.verify_token(session, secret=secret)
        if rec is None:
            return None
        return Principal(token_id=rec.id, name=rec.name, scopes=frozenset(rec.scopes))


class AuthenticationMiddleware:
    """Puts `principal` (a Principal or None) and `auth_error` into the request state of every HTTP request.

    With auth off, a valid token is still recognised (so per-token limits apply to it) and anything
    else is the anonymous caller. With auth on, a missing or bad token leaves principal None; the
    route's dependency answers 401, so public endpoints (/healthz, /docs) stay reachable.
    """

    def __init__(self, app: ASGIApp, *, settings: Settings, required: bool):
        self.app = app
        self.url = settings.resolved_database_url
        self.required = required

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        principal, error = None, None
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if header is None:
            error = "missing bearer token (Authorization: Bearer <token>)"
        else:
            kind, _, secret = header.decode("latin-1").partition(" ")
            if kind.lower() != "bearer" or not secret.strip():
                error = "expected 'Authorization: Bearer <token>'"
            else:
                principal = await run_in_threadpool(_lookup, self.url, secret.strip())
                if principal is None:
                    error = "unknown, malformed or revoked token"
        if principal is None and not self.required:
            principal, error = ANONYMOUS, None
        state["principal"] = principal
        state["auth_error"] = error
        await self.app(scope, receive, send)


def get_principal(request: Request, _=Depends(bearer_scheme)) -> Principal:
    """The authenticated caller; 401 when the server requires a token and there is none that is valid."""
    principal = getattr(request.state, "principal", None)
    if principal is None:
        raise Unauthorized(f"authorization: {getattr(request.state, 'auth_error', None) or 'missing bearer token'}",
                           error="invalid_token" if request.headers.get("authorization") else "")
    return principal


@dataclass(frozen=True)
class Caller:
    """Whose data a request works on. `owner` stamps what it creates; `sees` is the owner its lookups
    are limited to (None: every owner's rows, for admins and for a server without auth, where
    everything belongs to the one local owner). `token_id` is the token a long response (an event
    stream) re-checks, None when the server does not require one."""

    owner: str
    sees: str | None
    token_id: str | None


def get_caller(request: Request, principal: Principal = Depends(get_principal)) -> Caller:
    if not request.app.state.auth_required:
        return Caller(owner=LOCAL_OWNER, sees=None, token_id=None)
    owner = principal.token_id or LOCAL_OWNER  # with auth on a principal always has a token
    return Caller(owner=owner, sees=None if principal.has("admin") else owner, token_id=principal.token_id)


def require_scope(scope: str):
    """A dependency that lets through only callers holding `scope` (admin holds them all)."""
    if scope not in tokens.SCOPES:
        raise ValueError(f"unknown scope {scope!r}; valid: {', '.join(tokens.SCOPES)}")

    def check(principal: Principal = Depends(get_principal)) -> Principal:
        if not principal.has(scope):
            raise Forbidden(scope)
        return principal

    return check


def require_method_scope(request: Request, principal: Principal = Depends(get_principal)) -> Principal:
    """Reading (GET, HEAD) needs `read`; anything that changes state needs `submit`."""
    scope = "read" if request.method in ("GET", "HEAD", "OPTIONS") else "submit"
    if not principal.has(scope):
        raise Forbidden(scope)
    return principal
