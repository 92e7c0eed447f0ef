"""The notifier: sends the webhook deliveries that are due, and retries those that fail.

It runs in a thread of every worker process; a Redis lock lets one of them send per
interval. Each row is claimed by a conditional UPDATE that moves its next attempt past a
lease, so two notifiers never send the same row at once; a notifier that dies mid-send
leaves the row to come back when the lease ends (delivery is at least once, and the
`X-Promptq-Delivery` header lets the receiver drop the repeat).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from sqlalchemy import ColumnElement, select, update
from sqlmodel import col

from jobs import webhooks
from jobs.constants import NOTIFIER_LOCK_KEY
from jobs.db import session_scope
from jobs.models import WebhookDelivery, utcnow
from jobs.settings import Settings
from worker.store import REDACTED

log = logging.getLogger(__name__)

BACKOFF_CAP_S = 3600.0
# httpx's timeout bounds each phase of a call (connect, write, each read), not the whole
# call: the claim outlasts a few of them before another notifier may send the row again.
LEASE_TIMEOUTS = 3
LEASE_MARGIN_S = 30.0
MAX_ERROR_CHARS = 500
MAX_ANSWER_BYTES = 1024  # of a refusing receiver's body, kept in last_error
USER_AGENT = "promptq-webhooks"


def backoff_s(
    attempt: int, base_s: float, cap_s: float = BACKOFF_CAP_S, rng: random.Random | None = None
) -> float:
    """The wait after the `attempt`-th failed try (1-based): doubling from `base_s`, capped.

    Half of it is jitter, so receivers that failed together are not all retried together;
    the other half is a floor (unlike worker.retry's full jitter), so a receiver that just
    failed is never called again at once.
    """
    ceiling_s = min(cap_s, base_s * 2 ** min(max(attempt, 1) - 1, 62))
    return (rng or random).uniform(ceiling_s / 2, ceiling_s)


@dataclass(frozen=True, slots=True)
class _Due:
    id: str
    event: str
    url: str
    payload: str
    attempts: int


def deliver_due(
    settings: Settings, client: httpx.Client, now: datetime | None = None, limit: int = 50
) -> dict[str, int]:
    """Send up to `limit` due deliveries once each; returns what became of them."""
    now = now or utcnow()
    done = {"delivered": 0, "retrying": 0, "failed": 0}
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
    if not secret:
        # Left due, not failed: a worker that has the secret (or this one, restarted) sends them.
        if _due_ids(now, 1):
            log.warning("webhooks are due but PROMPTQ_WEBHOOK_SECRET is not set on this worker")
        return done
    lease = timedelta(seconds=settings.webhook_timeout_s * LEASE_TIMEOUTS + LEASE_MARGIN_S)
    for delivery_id in _due_ids(now, limit):
        row = _claim(delivery_id, now, now + lease)
        if row is None:
            continue  # another notifier took it
        error = _send(client, row, secret)
        done[_record(settings, row, error, now)] += 1
    return done


def _pending(now: datetime) -> tuple[ColumnElement[bool], ...]:
    return (
        col(WebhookDelivery.delivered_at).is_(None),
        col(WebhookDelivery.failed_at).is_(None),
        col(WebhookDelivery.next_attempt_at) <= now,
    )


def _due_ids(now: datetime, limit: int) -> list[str]:
    stmt = (
        select(col(WebhookDelivery.id))
        .where(*_pending(now))
        .order_by(col(WebhookDelivery.next_attempt_at))
        .limit(limit)
    )
    with session_scope() as session:
        return list(session.scalars(stmt))


def _claim(delivery_id: str, now: datetime, until: datetime) -> _Due | None:
    stmt = (
        update(WebhookDelivery)
        .where(col(WebhookDelivery.id) == delivery_id, *_pending(now))
        .values(next_attempt_at=until)
        .returning(
            col(WebhookDelivery.id),
            col(WebhookDelivery.event),
            col(WebhookDelivery.url),
            col(WebhookDelivery.payload),
            col(WebhookDelivery.attempts),
        )
    )
    with session_scope() as session:
        row = session.execute(stmt).first()
    return _Due(*row) if row else None


def _send(client: httpx.Client, row: _Due, secret: str) -> str | None:
    """POST the stored body; None when the receiver took it (2xx), else why not."""
    body = row.payload.encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        webhooks.SIGNATURE_HEADER: webhooks.sign(secret, body),
        webhooks.EVENT_HEADER: row.event,
        webhooks.DELIVERY_HEADER: row.id,
        webhooks.TIMESTAMP_HEADER: str(int(time.time())),
    }
    try:
        with client.stream("POST", row.url, content=body, headers=headers) as response:
            if response.is_success:
                return None
            answer = b""
            for chunk in response.iter_bytes():
                answer += chunk
                if len(answer) >= MAX_ANSWER_BYTES:
                    break
    except Exception as exc:  # noqa: BLE001 - whatever went wrong, this attempt failed
        return _scrub(f"{type(exc).__name__}: {exc}", secret)
    text = " ".join(answer[:MAX_ANSWER_BYTES].decode("utf-8", "replace").split())
    return _scrub(f"HTTP {response.status_code}" + (f": {text}" if text else ""), secret)


def _scrub(text: str, secret: str) -> str:
    # Nothing sends the secret, but a receiver or an exception could echo anything.
    text = text.replace(secret, REDACTED)
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "..."


def _record(settings: Settings, row: _Due, error: str | None, now: datetime) -> str:
    """Store the attempt's outcome; returns `delivered`, `retrying` or `failed` (gave up)."""
    attempts = row.attempts + 1
    values: dict[str, object] = {"attempts": attempts}
    if error is None:
        values["delivered_at"] = now
        outcome = "delivered"
    else:
        values["last_error"] = error
        if attempts >= settings.webhook_max_attempts:
            values["failed_at"] = now
            outcome = "failed"
            log.warning("webhook %s to %s: giving up after %d tries", row.id, row.url, attempts)
        else:
            wait_s = backoff_s(attempts, settings.webhook_backoff_base_s)
            values["next_attempt_at"] = now + timedelta(seconds=wait_s)
            outcome = "retrying"
    stmt = (
        update(WebhookDelivery)
        .where(
            col(WebhookDelivery.id) == row.id,
            col(WebhookDelivery.delivered_at).is_(None),
            col(WebhookDelivery.failed_at).is_(None),
        )
        .values(**values)
    )
    with session_scope() as session:
        session.execute(stmt)
    return outcome


class Notifier(threading.Thread):
    """Calls deliver_due every interval while this process lives, one process at a time."""

    def __init__(self, settings: Settings, redis_url: str) -> None:
        super().__init__(name="promptq-notifier", daemon=True)
        self.settings = settings
        # A Redis restart breaks every pooled connection: reconnect instead of failing once.
        self.redis = redis.Redis.from_url(
            redis_url,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )
        self.client = httpx.Client(timeout=settings.webhook_timeout_s)
        self.stopping = threading.Event()

    def run(self) -> None:
        interval_s = self.settings.webhook_interval_s
        lock_ms = max(1, int(interval_s * 900))
        try:
            while not self.stopping.wait(interval_s):
                try:
                    if self.redis.set(NOTIFIER_LOCK_KEY, "1", nx=True, px=lock_ms):
                        did = deliver_due(self.settings, self.client)
                        if any(did.values()):
                            log.info("webhooks: %s", did)
                except Exception as exc:  # noqa: BLE001 - a failed pass must not end the thread
                    log.warning("webhook delivery pass failed: %s", exc)
        finally:
            self.client.close()

    def stop(self) -> None:
        self.stopping.set()
