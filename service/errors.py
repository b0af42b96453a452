"""Root exceptions of the service part; the API turns them into HTTP responses at its edge."""

from __future__ import annotations


class BitplanError(Exception):
    """Root of every error bitplan raises on purpose."""


class ServiceError(BitplanError):
    """Root of the service part's errors."""


class StorageError(ServiceError):
    """The database or blob store failed; raised from the underlying driver error."""


class NotFound(ServiceError):
    """A resource id that does not exist (→ 404)."""

    def __init__(self, kind: str, ident: str):
        super().__init__(f"{kind} {ident!r} not found")
        self.kind = kind
        self.ident = ident


class InvalidInput(ServiceError):
    """Input that is well-formed HTTP but wrong for bitplan (→ 422 naming the field)."""

    def __init__(self, field: str, message: str, *, status: int = 422, extra: dict | None = None):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status
        self.extra = extra or {}


class Conflict(ServiceError):
    """The resource is not in a state that allows the request (e.g. plan of an unfinished analysis → 409)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class Unauthorized(ServiceError):
    """No bearer token, or one that is unknown or revoked, where the server requires one (→ 401)."""

    def __init__(self, message: str, *, error: str = "invalid_token"):
        super().__init__(message)
        self.message = message
        self.error = error


class Forbidden(ServiceError):
    """A valid token without the scope the operation needs (→ 403 naming the scope)."""

    def __init__(self, scope: str):
        super().__init__(f"this token lacks the '{scope}' scope")
        self.scope = scope


class TooManyRequests(ServiceError):
    """A per-token limit is reached: request rate or concurrent jobs (→ 429 with Retry-After)."""

    def __init__(self, field: str, message: str, *, retry_after: float):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.retry_after = retry_after
