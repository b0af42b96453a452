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
