"""The sweeper: brings back work that lost its worker or its message, expires and finalizes.

It runs in a thread of every worker process; a Redis lock lets one of them sweep per
interval, and every step is a conditional update, so two sweeps at once are still safe.

An expired lease means its worker died, unless the database was unreachable: then live
workers could not renew either. After a sweep finds the database down, no lease is taken
back for one lease time, which gives every live worker a renewal once it is back; taking
them back at once would throw away the answers those workers are about to store (each a
call paid twice).
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from sqlalchemy.exc import DBAPIError

from jobs import batches, queue
from jobs.constants import DB_DOWN_KEY, SWEEPER_LOCK_KEY
from jobs.db import session_scope
from jobs.models import utcnow
from jobs.settings import Settings
from worker import store
from worker.store import Claimed, Outcome

log = logging.getLogger(__name__)

PUBLISH_LIMIT = 10_000
# A batch validating for longer than this lost the process validating it.
VALIDATION_GIVEN_UP_S = 3600
# Set, for one lease time, by a sweep that could not reach the database.


def sweep_once(settings: Settings, *, take_back_leases: bool = True) -> dict[str, int]:
    """One pass; returns what it did (for logs and tests)."""
    now = utcnow()
    done = {"requeued": 0, "failed": 0, "published": 0, "expired": 0, "finalized": 0}

    lost = store.expired_leases(now) if take_back_leases else []
    poisoned = [row for row in lost if row[2] >= settings.max_attempts]
    if poisoned:
        store.record([_worker_lost(rid, bid, attempt) for rid, bid, attempt in poisoned])
        done["failed"] = len(poisoned)
    retry = [rid for rid, _bid, attempt in lost if attempt < settings.max_attempts]
    if retry:
        store.requeue(retry, now)
        done["requeued"] = len(retry)

    with session_scope() as session:
        done["failed"] += batches.fail_interrupted_validations(
            session, now - timedelta(seconds=VALIDATION_GIVEN_UP_S)
        )
        for batch_id in batches.overdue_batches(session, now):
            batches.expire(session, batch_id)
            done["expired"] += 1
        open_ids = batches.open_batches(session)
    for batch_id in open_ids:
        with session_scope() as session:
            done["finalized"] += batches.finalize_if_done(session, batch_id)

    # Queued rows whose message is gone: NULL enqueued_at always; stale ones only when the
    # broker's queue is empty, else a long backlog would be sent twice.
    try:
        empty = queue.queue_length() == 0
    except Exception:  # noqa: BLE001 - broker down: publishing would fail anyway
        return done
    stale_before = now - timedelta(seconds=settings.requeue_after_s) if empty else None
    for priority, ids in store.due_unsent(now, stale_before, PUBLISH_LIMIT).items():
        queue.publish(ids, priority=priority)
        done["published"] += len(ids)
    return done


def _worker_lost(rid: str, batch_id: str, attempt: int) -> Outcome:
    claimed = Claimed(rid, batch_id, "", "", "", attempt)
    return Outcome(
        claimed,
        "failed",
        error_code="worker_lost",
        error_message=f"the worker running this request stopped {attempt} time(s); giving up",
    )


class Sweeper(threading.Thread):
    """Calls sweep_once every interval while this process lives, one process at a time."""

    def __init__(self, settings: Settings, redis_url: str) -> None:
        super().__init__(name="promptq-sweeper", daemon=True)
        self.settings = settings
        # A Redis restart breaks every pooled connection: reconnect instead of failing once.
        self.redis = redis.Redis.from_url(
            redis_url,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )
        self.stopping = threading.Event()
        self.lease_ms = int(settings.lease_s * 1000)

    def run(self) -> None:
        interval_s = self.settings.sweep_interval_s
        while not self.stopping.wait(interval_s):
            try:
                lock_ms = int(interval_s * 900)
                if self.redis.set(SWEEPER_LOCK_KEY, "1", nx=True, px=lock_ms):
                    self.sweep()
            except Exception as exc:  # noqa: BLE001 - a sweep failing must not end the thread
                log.warning("sweep failed: %s", exc)

    def sweep(self) -> None:
        db_was_down = bool(self.redis.exists(DB_DOWN_KEY))
        try:
            did = sweep_once(self.settings, take_back_leases=not db_was_down)
        except DBAPIError:
            self.redis.set(DB_DOWN_KEY, "1", px=self.lease_ms)
            raise
        if any(did.values()):
            log.info("sweep: %s", did)

    def stop(self) -> None:
        self.stopping.set()
