"""Webhooks: a batch's terminal state as a signed event, queued in an outbox for delivery.

`enqueue` writes the event in the transaction that ends the batch, so a state is never
lost nor announced without having happened; workers (worker/notifier.py) send it. The
body is stored as the exact bytes sent and signed, so every attempt carries the same
body and signature, and a receiver drops repeats by the delivery id.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from jobs.errors import InvalidRequestError
from jobs.models import BatchStatus, WebhookDelivery, new_id, utcnow
from jobs.settings import Settings

# A terminal batch status -> the event announcing it (OpenAI's names).
EVENTS: dict[str, str] = {
    BatchStatus.COMPLETED.value: "batch.completed",
    BatchStatus.FAILED.value: "batch.failed",
    BatchStatus.EXPIRED.value: "batch.expired",
    BatchStatus.CANCELLED.value: "batch.cancelled",
}

SIGNATURE_HEADER = "X-Promptq-Signature"
EVENT_HEADER = "X-Promptq-Event"
DELIVERY_HEADER = "X-Promptq-Delivery"
TIMESTAMP_HEADER = "X-Promptq-Timestamp"

MAX_URL_CHARS = 2048  # WebhookDelivery.url and Batch.webhook_url


def event_name(batch: dict[str, Any]) -> str:
    """The event announcing `batch`'s status; ValueError if that status is not terminal."""
    try:
        return EVENTS[batch["status"]]
    except KeyError:
        raise ValueError(
            f"batch {batch['id']} is {batch['status']!r}: not a terminal state"
        ) from None


def event_body(batch: dict[str, Any], created_at_s: int | None = None) -> str:
    """The event announcing `batch`'s terminal status, as compact JSON (the bytes signed)."""
    event = {
        "id": f"evt_{secrets.token_hex(12)}",
        "object": "event",
        "type": event_name(batch),
        "created_at": int(time.time()) if created_at_s is None else created_at_s,
        "data": batch,
    }
    return json.dumps(event, separators=(",", ":"))


def enqueue(session: Session, batch: dict[str, Any], url: str) -> None:
    """Queue the event for `batch` (an OpenAI Batch object in a terminal status) to `url`.

    Once per state: if the (batch, event) row exists this adds nothing, and a concurrent
    insert is absorbed by ON CONFLICT, so it never fails the caller's transaction.
    """
    now = utcnow()
    values = {
        "id": new_id("whd_"),
        "batch_id": batch["id"],
        "event": event_name(batch),
        "url": url,
        "payload": event_body(batch),
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(WebhookDelivery).values(**values)
    session.execute(stmt.on_conflict_do_nothing(index_elements=["batch_id", "event"]))


def sign(secret: str, body: bytes) -> str:
    """The signature header's value: `sha256=` and the hex HMAC-SHA256 of `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    """True if `signature` is `sign(secret, body)` (compared in constant time)."""
    return hmac.compare_digest(sign(secret, body).encode(), signature.encode())


def check_url(url: str) -> str:
    """`url` if it can take webhooks (http or https, with a host); else InvalidRequestError."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        raise _bad_url(url, str(exc)) from None
    if parts.scheme not in ("http", "https"):
        raise _bad_url(url, "it must start with http:// or https://")
    if not host:
        raise _bad_url(url, "it has no host")
    if len(url) > MAX_URL_CHARS or any(ch.isspace() for ch in url):
        raise _bad_url(url, f"it must be at most {MAX_URL_CHARS} characters, without spaces")
    return url


def _bad_url(url: str, why: str) -> InvalidRequestError:
    shown = url if len(url) <= 200 else url[:200] + "..."
    return InvalidRequestError(
        f"--webhook (webhook_url) {shown!r} is not a webhook URL: {why}",
        param="webhook_url",
        code="invalid_webhook_url",
    )


def require_secret(settings: Settings) -> str:
    """The signing secret; InvalidRequestError when none is set (nothing is sent unsigned)."""
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
    if not secret:
        raise InvalidRequestError(
            "set PROMPTQ_WEBHOOK_SECRET to use webhooks: every delivery is signed with it",
            param="webhook_url",
            code="webhook_secret_missing",
        )
    return secret
