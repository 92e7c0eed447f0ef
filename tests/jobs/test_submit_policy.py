"""Submission under a policy: `--reuse` answers repeats of earlier successes; a window waits."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from jobs import results, reuse, submit
from jobs.db import session_scope
from jobs.models import Batch, Request
from jobs.policy import Policy
from jobs.schedule import Window
from worker import store
from worker.store import Outcome
from worker.usage import Usage


def lines(prompts: list[str], **extra: Any) -> list[bytes]:
    return [
        json.dumps(
            {
                "custom_id": f"c{i}",
                "method": "POST",
                "url": "/v1/responses",
                "body": {"model": "o1-mini", "input": p, **extra},
            }
        ).encode()
        for i, p in enumerate(prompts)
    ]


def answered(prompts: list[str], owner: str = "local") -> str:
    """A batch whose requests all succeeded, as if workers ran them."""
    batch = submit.create_batch(lambda: lines(prompts), name="t", owner=owner, enqueue=False)
    with session_scope() as session:
        ids = list(session.scalars(select(Request.id).where(Request.batch_id == batch.id)))
    outcomes = [
        Outcome(
            c,
            "succeeded",
            status_code=200,
            upstream_request_id=f"req_{c.id}",
            response_body=json.dumps({"output_text": f"answer to {c.id}"}),
            usage=Usage(10, 0, 20, 5, 30),
            cost_usd=0.01,
        )
        for c in store.claim(ids, lease_s=60)
    ]
    store.record(outcomes)
    return batch.id


def rows(batch_id: str) -> list[Request]:
    with session_scope() as session:
        stmt = select(Request).where(Request.batch_id == batch_id).order_by(Request.line)
        return list(session.scalars(stmt))


def test_the_fingerprint_ignores_key_order_but_not_the_model_or_the_url() -> None:
    a = reuse.fingerprint("/v1/responses", {"model": "m", "input": "x", "max_output_tokens": 5})
    b = reuse.fingerprint("/v1/responses", {"max_output_tokens": 5, "input": "x", "model": "m"})
    assert a == b
    assert a != reuse.fingerprint("/v1/responses", {"model": "n", "input": "x"})
    assert a != reuse.fingerprint("/v1/chat/completions", {"model": "m", "input": "x"})


def test_repeats_of_earlier_successes_are_answered_at_submission_for_free(db: str) -> None:
    first = answered(["alpha", "beta"])
    batch = submit.create_batch(
        lambda: lines(["alpha", "gamma", "beta"]),
        name="t",
        enqueue=False,
        policy=Policy(reuse=True),
    )
    assert (batch.request_total, batch.request_completed) == (3, 2)
    alpha, gamma, beta = rows(batch.id)
    earlier = {r.custom_id: r for r in rows(first)}
    assert (alpha.status, alpha.reused_from) == ("succeeded", earlier["c0"].id)
    assert (beta.status, beta.reused_from) == ("succeeded", earlier["c1"].id)
    assert alpha.response_body == earlier["c0"].response_body
    assert (alpha.cost_usd, alpha.total_tokens) == (0.0, 0)  # it cost nothing this time
    assert (gamma.status, gamma.reused_from) == ("queued", None)
    with session_scope() as session:
        line = next(results.output_lines(session, batch.id))
    assert json.loads(line)["reused_from"] == earlier["c0"].id


def test_a_reuse_of_a_reuse_names_the_request_that_paid(db: str) -> None:
    first = answered(["alpha"])
    second = submit.create_batch(lambda: lines(["alpha"]), name="t", policy=Policy(reuse=True))
    third = submit.create_batch(lambda: lines(["alpha"]), name="t", policy=Policy(reuse=True))
    assert rows(third.id)[0].reused_from == rows(first)[0].id
    assert second.status == third.status == "completed"  # nothing was left to run


def test_another_owners_results_are_never_reused(db: str) -> None:
    answered(["alpha"], owner="someone-else")
    batch = submit.create_batch(
        lambda: lines(["alpha"]), name="t", enqueue=False, policy=Policy(reuse=True)
    )
    (row,) = rows(batch.id)
    assert (row.status, row.reused_from) == ("queued", None)


def test_without_reuse_an_identical_request_runs_again(db: str) -> None:
    answered(["alpha"])
    batch = submit.create_batch(lambda: lines(["alpha"]), name="t", enqueue=False)
    assert rows(batch.id)[0].status == "queued"


def test_a_window_that_is_shut_now_holds_the_batch_until_it_opens(db: str) -> None:
    now = datetime.now(UTC)
    opens = (now + timedelta(hours=2)).replace(second=0, microsecond=0)
    window = Window.parse(f"{opens:%H:%M}-{opens + timedelta(hours=1):%H:%M}", 0)
    batch = submit.create_batch(
        lambda: lines(["alpha"]), name="t", enqueue=False, policy=Policy(window=window)
    )
    (row,) = rows(batch.id)
    assert row.not_before == opens and row.enqueued_at is None  # the sweeper sends it then
    with session_scope() as session:
        stored = session.get(Batch, batch.id)
        assert stored is not None and stored.window == str(window)
        # the completion window counts open time only: 24 hours of a one-hour window
        assert stored.expires_at == opens + timedelta(days=23, hours=1)
