"""API keys for the HTTP API: created once in plain text, stored as a SHA-256 and a prefix.

A key belongs to an owner; every file, batch and job the key creates is the owner's and
is visible to that owner's keys alone. The owner defaults to the key's name, so a key can
be rotated by creating another with the same owner and revoking the old one.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlmodel import Session, col

from jobs.errors import InvalidRequestError, NotFoundError
from jobs.models import ApiKey, utcnow

KEY_PREFIX = "pq-"
# shown by `promptq keys list` so a leaked key can be matched to its row
SHOWN_PREFIX_CHARS = 11
MAX_NAME_CHARS = 128


@dataclass(frozen=True, slots=True)
class NewKey:
    """A freshly created key: `plain` exists only here, never in the database."""

    row: ApiKey
    plain: str


def digest(plain: str) -> str:
    return hashlib.sha256(plain.encode()).hexdigest()


def create(session: Session, name: str, owner: str | None = None) -> NewKey:
    """A new key for `owner` (default: `name`)."""
    name = name.strip()
    owner = (owner or name).strip()
    if not name or len(name) > MAX_NAME_CHARS or len(owner) > MAX_NAME_CHARS:
        raise InvalidRequestError(
            f"a key's name and owner must be 1 to {MAX_NAME_CHARS} characters", param="name"
        )
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name, owner=owner, key_hash=digest(plain), prefix=plain[:SHOWN_PREFIX_CHARS])
    session.add(row)
    session.flush()
    return NewKey(row, plain)


def list_keys(session: Session) -> list[ApiKey]:
    """Every key, revoked ones too, oldest first."""
    return list(session.scalars(select(ApiKey).order_by(col(ApiKey.created_at))))


def revoke(session: Session, name_or_id: str) -> list[ApiKey]:
    """Revoke the key with this id, or every active key with this name; returns them."""
    now = utcnow()
    found = list(
        session.scalars(
            select(ApiKey).where(
                or_(col(ApiKey.id) == name_or_id, col(ApiKey.name) == name_or_id),
                col(ApiKey.revoked_at).is_(None),
            )
        )
    )
    if not found:
        raise NotFoundError(f"no active key named or with id {name_or_id!r}")
    for key in found:
        key.revoked_at = now
    session.flush()
    return found


def owner_of(session: Session, plain: str) -> str | None:
    """The owner of an active key, or None for an unknown or revoked one."""
    stmt = select(col(ApiKey.owner)).where(
        col(ApiKey.key_hash) == digest(plain),
        col(ApiKey.revoked_at).is_(None),
    )
    return session.scalars(stmt).first()
