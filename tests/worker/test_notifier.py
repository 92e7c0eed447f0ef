"""The notifier against a real local HTTP receiver: once per state, signed, retried, given up."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlmodel import col

from jobs import webhooks
from jobs.batches import to_openai
from jobs.db import session_scope
from jobs.models import Batch, WebhookDelivery, utcnow
from jobs.settings import Settings, get_settings
from tests.deploy import apply_env, wait_for
from tests.receiver import Hit, Receiver
from worker import notifier
from worker.notifier import Notifier, backoff_s, deliver_due

SECRET = "whsec-" + "7" * 32
LATER = timedelta(hours=2)  # past any backoff with the default settings


def signed_correctly(hit: Hit, secret: str = SECRET) -> bool:
    return webhooks.verify(secret, hit.body, hit.headers[webhooks.SIGNATURE_HEADER])


@pytest.fixture
def settings(db: str) -> Settings:
    return get_settings().model_copy(
        update={"webhook_secret": SecretStr(SECRET), "webhook_max_attempts": 3}
    )


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as c:
        yield c


def ended_batch(url: str, status: str = "completed") -> str:
    """A batch that just reached `status`, its webhook queued; returns the delivery's id."""
    with session_scope() as session:
        batch = Batch(endpoint="/v1/responses", status=status, request_total=2, webhook_url=url)
        session.add(batch)
        session.flush()
        webhooks.enqueue(session, to_openai(batch), url)
    with session_scope() as session:
        stmt = select(col(WebhookDelivery.id)).where(col(WebhookDelivery.batch_id) == batch.id)
        return session.scalars(stmt).one()


def delivery(delivery_id: str) -> WebhookDelivery:
    with session_scope() as session:
        row = session.get(WebhookDelivery, delivery_id)
        assert row is not None
        return row


def test_a_receiver_whose_first_attempt_fails_gets_the_event_once_signed(
    settings: Settings, client: httpx.Client
) -> None:
    with Receiver(statuses=[500]) as receiver:
        delivery_id = ended_batch(receiver.url)
        now = utcnow()
        assert deliver_due(settings, client, now) == {"delivered": 0, "retrying": 1, "failed": 0}
        assert deliver_due(settings, client, now)["retrying"] == 0  # not due before its backoff
        assert deliver_due(settings, client, now + LATER)["delivered"] == 1
        assert not any(deliver_due(settings, client, now + 2 * LATER).values())

    row = delivery(delivery_id)
    assert [hit.status for hit in receiver.hits] == [500, 200]
    assert (row.attempts, row.failed_at, row.last_error) == (2, None, "HTTP 500")
    assert row.delivered_at is not None
    for hit in receiver.hits:  # every attempt: the same signed body, and how to tell repeats
        assert hit.path == "/hook"
        assert hit.body == row.payload.encode()
        assert signed_correctly(hit)
        assert hit.headers[webhooks.EVENT_HEADER] == "batch.completed"
        assert hit.headers[webhooks.DELIVERY_HEADER] == delivery_id
        assert abs(int(hit.headers[webhooks.TIMESTAMP_HEADER]) - time.time()) < 60
        assert hit.headers["Content-Type"] == "application/json"


def test_a_receiver_that_keeps_failing_is_given_up_after_the_last_attempt(
    settings: Settings, client: httpx.Client
) -> None:
    with Receiver(statuses=[503] * 10, answer="down for maintenance") as receiver:
        delivery_id = ended_batch(receiver.url, "failed")
        now = utcnow()
        outcomes = [deliver_due(settings, client, now + n * LATER) for n in range(5)]

    assert [o for o in outcomes if any(o.values())] == [
        {"delivered": 0, "retrying": 1, "failed": 0},
        {"delivered": 0, "retrying": 1, "failed": 0},
        {"delivered": 0, "retrying": 0, "failed": 1},
    ]
    assert len(receiver.hits) == settings.webhook_max_attempts == 3
    row = delivery(delivery_id)
    assert (row.attempts, row.delivered_at) == (3, None)
    assert row.failed_at is not None
    assert row.last_error == "HTTP 503: down for maintenance"


def test_a_receiver_that_does_not_answer_in_time_has_failed_that_attempt(
    settings: Settings,
) -> None:
    with Receiver(delay_s=2) as receiver, httpx.Client(timeout=0.3) as impatient:
        delivery_id = ended_batch(receiver.url)
        did = deliver_due(settings, impatient, utcnow())

    assert did["retrying"] == 1
    row = delivery(delivery_id)
    assert (row.attempts, row.delivered_at) == (1, None)
    assert row.last_error is not None and "Timeout" in row.last_error


def test_a_receiver_nobody_listens_on_has_failed_that_attempt(
    settings: Settings, client: httpx.Client
) -> None:
    with Receiver() as gone:
        url = gone.url
    delivery_id = ended_batch(url)

    assert deliver_due(settings, client, utcnow())["retrying"] == 1
    assert "ConnectError" in (delivery(delivery_id).last_error or "")


def test_the_secret_never_appears_in_last_error(settings: Settings, client: httpx.Client) -> None:
    with Receiver(statuses=[400], answer=f"bad signature, expected key {SECRET}") as receiver:
        delivery_id = ended_batch(receiver.url)
        deliver_due(settings, client, utcnow())

    last_error = delivery(delivery_id).last_error or ""
    assert last_error.startswith("HTTP 400: bad signature")
    assert SECRET not in last_error and "[redacted]" in last_error


def test_nothing_is_sent_unsigned_while_no_secret_is_set(
    settings: Settings, client: httpx.Client
) -> None:
    unsigned = settings.model_copy(update={"webhook_secret": None})
    with Receiver() as receiver:
        delivery_id = ended_batch(receiver.url)
        assert not any(deliver_due(unsigned, client, utcnow()).values())
        assert receiver.hits == []
        # left due, not failed: a worker with the secret sends it
        assert deliver_due(settings, client, utcnow())["delivered"] == 1
    assert delivery(delivery_id).attempts == 1


def test_a_delivery_being_sent_is_not_sent_again_by_another_notifier(
    settings: Settings, client: httpx.Client
) -> None:
    with Receiver(delay_s=1) as receiver:
        ended_batch(receiver.url)
        now = utcnow()
        first = threading.Thread(target=deliver_due, args=(settings, client, now))
        first.start()
        wait_for(lambda: receiver.hits, 5, "the first notifier's POST", 0.01)
        with httpx.Client(timeout=5) as other:
            assert not any(deliver_due(settings, other, now).values())
        first.join()

    assert len(receiver.hits) == 1


def test_the_backoff_doubles_from_its_base_with_half_of_it_jittered_and_is_capped() -> None:
    rng = random.Random(7)
    for attempt, ceiling_s in [(1, 10), (2, 20), (3, 40), (9, 2560), (10, 3600), (500, 3600)]:
        waits = [backoff_s(attempt, 10.0, 3600.0, rng) for _ in range(200)]
        assert all(ceiling_s / 2 <= wait_s <= ceiling_s for wait_s in waits)
        assert max(waits) - min(waits) > ceiling_s / 4  # jittered, not fixed
    assert backoff_s(0, 10.0, rng=rng) <= 10  # a nonsense attempt number waits like the first


def test_the_notifier_thread_delivers_in_the_background_and_outlives_a_failed_pass(
    db: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    apply_env(
        monkeypatch,
        {
            "PROMPTQ_REDIS_URL": redis_url,
            "PROMPTQ_WEBHOOK_SECRET": SECRET,
            "PROMPTQ_WEBHOOK_INTERVAL_S": "0.05",
        },
    )
    passes: list[int] = []
    real = notifier.deliver_due

    def failing_once(*args: Any, **kwargs: Any) -> dict[str, int]:
        passes.append(1)
        if len(passes) == 1:
            raise ConnectionError("database unreachable")
        return real(*args, **kwargs)

    monkeypatch.setattr(notifier, "deliver_due", failing_once)
    with Receiver() as receiver:
        thread = Notifier(get_settings(), redis_url)
        thread.start()
        try:
            ended_batch(receiver.url)
            wait_for(receiver.accepted, 10, "the notifier to deliver")
        finally:
            thread.stop()
            thread.join(5)
    assert signed_correctly(receiver.hits[0])
    assert not thread.is_alive()
