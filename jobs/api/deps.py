"""What routes depend on: a database session, the settings, and the caller's owner."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from jobs import keys
from jobs.db import session_scope
from jobs.errors import UnauthorizedError
from jobs.settings import Settings, get_settings

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="A key from `promptq keys create NAME`, sent as `Authorization: Bearer <key>`.",
)


def get_session() -> Iterator[Session]:
    """A session whose transaction commits when the route returns, before the response is sent.

    Not for routes that stream or wait: on SQLite every transaction holds the write lock
    (BEGIN IMMEDIATE) until it ends, so those open short sessions of their own.
    """
    with session_scope() as session:
        yield session


def current_owner(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The owner of the request's API key; a short transaction of its own, whatever the route."""
    if credentials is None or not credentials.credentials:
        raise UnauthorizedError(
            "You didn't provide an API key: send it as 'Authorization: Bearer <key>' "
            "(create one with `promptq keys create NAME`)."
        )
    with session_scope() as session:
        owner = keys.owner_of(session, credentials.credentials)
    if owner is None:
        raise UnauthorizedError("Incorrect API key provided, or the key was revoked.")
    return owner


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
CurrentOwner = Annotated[str, Depends(current_owner)]
