"""API tokens: created with a random secret shown once, stored as a sha256 hash, checked in constant time.

A token reads `bp_<prefix>_<secret>`. The prefix is public and indexes the row, so a lookup needs no
scan and timing tells an attacker nothing about the secret: only `hmac.compare_digest` on hashes
touches it. The secret has 256 bits of entropy, so a plain (unsalted) sha256 is enough; a slow KDF
would only slow down every request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.storage.db.models import ApiTokenRecord, utcnow
from service.errors import NotFound

SCOPES = ("read", "submit", "admin")
_PREFIX_LEN = 8

__all__ = [
    "SCOPES", "IssuedToken", "create_token", "verify_token", "is_live", "list_tokens", "revoke_token", "parse_scopes",
]


@dataclass(frozen=True)
class IssuedToken:
    """A freshly created token: `secret` exists only here, never in the database."""

    record: ApiTokenRecord
    secret: str


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_scopes(scopes: str | list[str]) -> list[str]:
    """Accept "read,submit" or a list; ValueError names the valid scopes when one is unknown."""
    items = [s.strip() for s in (scopes.split(",") if isinstance(scopes, str) else scopes) if s.strip()]
    if not items:
        raise ValueError(f"give at least one scope of {', '.join(SCOPES)}")
    unknown = sorted(set(items) - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope(s) {unknown}; valid: {', '.join(SCOPES)}")
    return [s for s in SCOPES if s in items]


def create_token(session: Session, *, name: str, scopes: str | list[str]) -> IssuedToken:
    checked = parse_scopes(scopes)
    while True:
        prefix = secrets.token_hex(_PREFIX_LEN // 2)
        if session.scalar(select(ApiTokenRecord.id).where(ApiTokenRecord.prefix == prefix)) is None:
            break
    secret = f"bp_{prefix}_{secrets.token_urlsafe(32)}"
    rec = ApiTokenRecord(name=name, prefix=prefix, secret_hash=_hash(secret), scopes=checked)
    session.add(rec)
    session.flush()
    return IssuedToken(rec, secret)


def verify_token(session: Session, *, secret: str) -> ApiTokenRecord | None:
    """The live token this secret belongs to, or None (malformed, unknown, wrong secret or revoked)."""
    parts = secret.split("_", 2)
    if len(parts) != 3 or parts[0] != "bp" or len(parts[1]) != _PREFIX_LEN:
        return None
    rec = session.scalar(select(ApiTokenRecord).where(ApiTokenRecord.prefix == parts[1]))
    # Compare even when no row matched, so a miss costs the same as a wrong secret.
    expected = rec.secret_hash if rec is not None else "0" * 64
    if not hmac.compare_digest(expected, _hash(secret)) or rec is None or rec.revoked_at is not None:
        return None
    return rec


def is_live(session: Session, *, token_id: str) -> bool:
    """Whether the token still exists unrevoked: long responses re-ask this while they run."""
    revoked = session.execute(select(ApiTokenRecord.revoked_at).where(ApiTokenRecord.id == token_id)).first()
    return revoked is not None and revoked[0] is None


def list_tokens(session: Session, *, include_revoked: bool = False) -> list[ApiTokenRecord]:
    stmt = select(ApiTokenRecord).order_by(ApiTokenRecord.created_at)
    if not include_revoked:
        stmt = stmt.where(ApiTokenRecord.revoked_at.is_(None))
    return list(session.scalars(stmt))


def revoke_token(session: Session, *, token_id: str) -> ApiTokenRecord:
    """Revoke by id or by prefix; revoking twice keeps the first time."""
    rec = session.get(ApiTokenRecord, token_id) or session.scalar(
        select(ApiTokenRecord).where(ApiTokenRecord.prefix == token_id)
    )
    if rec is None:
        raise NotFound("token", token_id)
    if rec.revoked_at is None:
        rec.revoked_at = utcnow()
    return rec
