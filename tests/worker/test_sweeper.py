"""The sweeper, against a real database and Redis: what it takes back, and when it waits."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from jobs import submit
from jobs.constants import DB_DOWN_KEY
from jobs.db import session_scope
from jobs.models import Request
from jobs.settings import get_settings
from tests.deploy import apply_env
from worker import store, sweeper
from worker.sweeper import Sweeper


def request_whose_worker_stopped_renewing() -> str:
    line = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/responses",
        "body": {"model": "o1-mini", "input": "hi"},
    }
    batch = submit.create_batch(lambda: [json.dumps(line).encode()], name="t", enqueue=False)
    with session_scope() as session:
        rid = session.scalars(select(Request.id).where(Request.batch_id == batch.id)).one()
    store.claim([rid], lease_s=-1)  # its lease is over at once
    return rid


def status_of(rid: str) -> str:
    with session_scope() as session:
        row = session.get(Request, rid)
        assert row is not None
        return row.status


def test_after_the_database_was_down_no_lease_is_taken_back_for_one_lease_time(
    db: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    apply_env(monkeypatch, {"PROMPTQ_REDIS_URL": redis_url, "PROMPTQ_LEASE_S": "30"})
    rid = request_whose_worker_stopped_renewing()
    sweep = Sweeper(get_settings(), redis_url)

    def database_down(*_: object, **__: object) -> dict[str, int]:
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))

    with monkeypatch.context() as m:
        m.setattr(sweeper, "sweep_once", database_down)
        with pytest.raises(OperationalError):
            sweep.sweep()
    assert 0 < sweep.redis.pttl(DB_DOWN_KEY) <= 30_000

    # Back up: its worker may be alive and about to renew, so the lease is left alone...
    sweep.sweep()
    assert status_of(rid) == "running"
    # ...until a lease time has passed without a renewal: then its worker is dead.
    sweep.redis.delete(DB_DOWN_KEY)
    sweep.sweep()
    assert status_of(rid) == "queued"
    assert sweep.redis.llen("promptq") == 1  # and it was sent again


def test_a_batch_left_validating_by_a_dead_process_ends_failed(
    db: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import timedelta

    from jobs.models import Batch, utcnow

    apply_env(monkeypatch, {"PROMPTQ_REDIS_URL": redis_url})
    with session_scope() as session:
        session.add(
            Batch(
                id="batch_stuck",
                endpoint="/v1/responses",
                status="validating",
                created_at=utcnow() - timedelta(hours=2),
            )
        )
        session.add(Batch(id="batch_fresh", endpoint="/v1/responses", status="validating"))
    sweeper.sweep_once(get_settings())
    with session_scope() as session:
        stuck, fresh = session.get(Batch, "batch_stuck"), session.get(Batch, "batch_fresh")
        assert stuck is not None and fresh is not None
        assert stuck.status == "failed" and stuck.failed_at is not None
        assert stuck.errors and stuck.errors[0]["code"] == "validation_interrupted"
        assert fresh.status == "validating"  # still being validated by a live process
