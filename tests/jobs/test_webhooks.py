"""Webhook events: queued once per terminal state, signed, and only to URLs that can take them."""

from __future__ import annotations

import json

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from jobs import webhooks
from jobs.batches import to_openai
from jobs.db import session_scope
from jobs.errors import InvalidRequestError
from jobs.models import Batch, WebhookDelivery
from jobs.settings import Settings

URL = "http://127.0.0.1:9/hook"


def ended_batch(status: str = "completed") -> dict[str, object]:
    """A batch stored in `status`; returns its OpenAI Batch object."""
    with session_scope() as session:
        batch = Batch(endpoint="/v1/responses", status=status, request_total=3, webhook_url=URL)
        session.add(batch)
        session.flush()
        return to_openai(batch)


def deliveries() -> list[WebhookDelivery]:
    with session_scope() as session:
        return list(session.scalars(select(WebhookDelivery)))


@pytest.mark.parametrize("status", sorted(webhooks.EVENTS))
def test_each_terminal_state_is_queued_once_as_its_openai_event(db: str, status: str) -> None:
    batch = ended_batch(status)
    with session_scope() as session:
        webhooks.enqueue(session, batch, URL)
    first = deliveries()
    with session_scope() as session:  # the state reached again (a retried transaction, a race)
        webhooks.enqueue(session, batch, URL)

    assert deliveries() == first
    [row] = first
    assert row.id.startswith("whd_")
    assert (row.batch_id, row.event, row.url) == (batch["id"], f"batch.{status}", URL)
    assert (row.attempts, row.delivered_at, row.failed_at) == (0, None, None)
    assert row.next_attempt_at <= row.created_at  # due at once
    event = json.loads(row.payload)
    assert event["id"].startswith("evt_")
    assert (event["object"], event["type"], event["data"]) == ("event", row.event, batch)
    assert isinstance(event["created_at"], int)
    assert " " not in row.payload  # compact: the bytes sent are the bytes signed


def test_a_batch_that_has_not_ended_is_refused_an_event(db: str) -> None:
    batch = ended_batch("in_progress")
    with session_scope() as session, pytest.raises(ValueError, match="not a terminal state"):
        webhooks.enqueue(session, batch, URL)
    assert deliveries() == []


def test_a_signature_verifies_its_body_and_nothing_else() -> None:
    body = b'{"type":"batch.completed"}'
    signature = webhooks.sign("s3cret", body)

    assert signature.startswith("sha256=") and len(signature) == 7 + 64
    assert webhooks.verify("s3cret", body, signature)
    assert not webhooks.verify("s3cret", body.replace(b"completed", b"cancelled"), signature)
    assert not webhooks.verify("another", body, signature)
    assert not webhooks.verify("s3cret", body, signature.removeprefix("sha256="))
    assert not webhooks.verify("s3cret", body, "")


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080/hook", "https://hooks.example.com/promptq?team=a"]
)
def test_http_and_https_urls_with_a_host_are_accepted(url: str) -> None:
    assert webhooks.check_url(url) == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://example.com/hook", "http:// or https://"),
        ("example.com/hook", "http:// or https://"),
        ("", "http:// or https://"),
        ("http:///hook", "no host"),
        ("http://example.com:port/hook", "Port"),
        ("http://example.com/a hook", "without spaces"),
        ("https://example.com/" + "a" * 2048, "at most 2048"),
    ],
)
def test_a_url_that_cannot_take_webhooks_is_refused_naming_the_option(url: str, why: str) -> None:
    with pytest.raises(InvalidRequestError, match=why) as caught:
        webhooks.check_url(url)
    assert caught.value.param == "webhook_url"
    assert "--webhook" in str(caught.value)


def test_webhooks_need_a_signing_secret() -> None:
    with pytest.raises(InvalidRequestError, match="set PROMPTQ_WEBHOOK_SECRET"):
        webhooks.require_secret(Settings(webhook_secret=None))
    with pytest.raises(InvalidRequestError, match="set PROMPTQ_WEBHOOK_SECRET"):
        webhooks.require_secret(Settings(webhook_secret=SecretStr("")))
    assert webhooks.require_secret(Settings(webhook_secret=SecretStr("s3cret"))) == "s3cret"
