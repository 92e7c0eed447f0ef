"""The HTTP API driven as its users drive it: the official `openai` SDK against a running
`promptq api`, real `promptq worker` processes behind it, the simulator as the upstream."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

import openai
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openai import OpenAI

from tests.apiserver import UPLOAD_LIMIT_BYTES, ApiServer
from tests.deploy import wait_for

MODEL = "o1-mini-2024-09-12"
ENDED = ("completed", "failed", "expired", "cancelled")


def batch_file(
    count: int, tag: str, *, rejected: int = 0, slow_from: int | None = None, slow_ms: int = 0
) -> tuple[bytes, dict[str, str]]:
    """JSONL of `count` requests; returns it and custom_id -> prompt.

    The first `rejected` carry a parameter o1-mini refuses (a 400, never retried); those
    from `slow_from` on take `slow_ms` at the simulator.
    """
    prompts: dict[str, str] = {}
    lines = []
    for i in range(count):
        custom_id = f"{tag}-{i:03d}"
        prompt = f"{tag}: summarise document {i}"
        if slow_from is not None and i >= slow_from:
            prompt += f" #sim:latency_ms={slow_ms}"
        body: dict[str, Any] = {"model": MODEL, "input": prompt}
        if i < rejected:
            body["temperature"] = 0.2
        prompts[custom_id] = prompt
        line = {"custom_id": custom_id, "method": "POST", "url": "/v1/responses", "body": body}
        lines.append(json.dumps(line))
    return ("\n".join(lines) + "\n").encode(), prompts


def jsonl(content: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in content.decode().splitlines() if line.strip()]


def answer_text(body: dict[str, Any]) -> str:
    for item in body["output"]:
        if item["type"] == "message":
            return str(item["content"][0]["text"])
    raise AssertionError(f"no message in {body}")


def upload(client: OpenAI, content: bytes, name: str = "in.jsonl") -> str:
    return client.files.create(file=(name, content), purpose="batch").id


def submit(client: OpenAI, content: bytes, **extra: Any) -> Any:
    return client.batches.create(
        input_file_id=upload(client, content),
        endpoint="/v1/responses",
        completion_window=extra.pop("completion_window", "24h"),
        **extra,
    )


def wait_ended(server: ApiServer, client: OpenAI, batch_id: str, timeout_s: float = 90) -> Any:
    def ended() -> Any:
        batch = client.batches.retrieve(batch_id)
        return batch if batch.status in ENDED else None

    return wait_for(ended, timeout_s, f"batch {batch_id} to end\n{server.logs()}", 0.2)


def check_every_line_answers_its_own_request(
    output: list[dict[str, Any]], prompts: dict[str, str]
) -> None:
    for line in output:
        assert line["error"] is None
        assert line["id"].startswith("batch_req_")
        assert line["response"]["status_code"] == 200
        assert answer_text(line["response"]["body"]) == "ECHO: " + prompts[line["custom_id"]]


def test_a_batch_made_with_the_openai_sdk_runs_and_its_files_answer_each_line(
    api_server: ApiServer,
) -> None:
    client = api_server.client(api_server.key("flow"))
    content, prompts = batch_file(40, "flow", rejected=3)
    created = submit(client, content, metadata={"project": "flow"})
    assert created.status in ("validating", "in_progress")
    assert created.metadata == {"project": "flow"}

    batch = wait_ended(api_server, client, created.id)

    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (40, 37)
    assert batch.request_counts.failed == 3
    for stamp in ("created_at", "in_progress_at", "finalizing_at", "completed_at", "expires_at"):
        assert isinstance(getattr(batch, stamp), int), stamp
    assert batch.usage is not None and batch.usage.output_tokens_details.reasoning_tokens > 0
    assert batch.output_file_id and batch.error_file_id
    output = jsonl(client.files.content(batch.output_file_id).content)
    errors = jsonl(client.files.content(batch.error_file_id).content)
    assert sorted(line["custom_id"] for line in output + errors) == sorted(prompts)
    check_every_line_answers_its_own_request(output, prompts)
    assert len(errors) == 3
    for line in errors:
        assert line["response"]["status_code"] == 400
        assert "temperature" in line["error"]["message"]
    assert sum(line["response"]["body"]["usage"]["total_tokens"] for line in output) == (
        batch.usage.total_tokens
    )
    assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"
    assert api_server.errors() == []


def test_results_of_a_running_batch_stream_in_input_order_and_resume_from_the_cursor(
    api_server: ApiServer,
) -> None:
    key = api_server.key("tail")
    client = api_server.client(key)
    content, prompts = batch_file(12, "tail", slow_from=8, slow_ms=1500)
    batch_id = submit(client, content).id
    seen: list[dict[str, Any]] = []
    seen_while_running = 0
    cursor = 0
    with api_server.http(key) as http:
        while True:
            answer = http.get(f"/v1/batches/{batch_id}/results", params={"after": cursor})
            assert answer.status_code == 200, answer.text
            assert answer.headers["content-type"].startswith("application/jsonl")
            page = jsonl(answer.content)
            assert [line["line"] for line in page] == list(
                range(cursor + 1, cursor + 1 + len(page))
            )
            seen.extend(page)
            cursor = int(answer.headers["x-promptq-next-after"])
            status = answer.headers["x-promptq-batch-status"]
            if status not in ENDED:
                seen_while_running = len(seen)
            elif cursor == 12:
                break
            time.sleep(0.1)
        again = http.get(f"/v1/batches/{batch_id}/results", params={"after": 12})
        assert again.content == b""
    assert 0 < seen_while_running < 12  # the fast lines came while the slow ones ran
    assert [line["custom_id"] for line in seen] == sorted(prompts)  # each once, in order
    check_every_line_answers_its_own_request(seen, prompts)


def test_promptqs_batch_options_ride_in_extra_body_and_a_bad_one_is_refused_by_name(
    api_server: ApiServer,
) -> None:
    client = api_server.client(api_server.key("options"))
    content, _ = batch_file(6, "options")
    file_id = upload(client, content)
    with pytest.raises(openai.BadRequestError) as refused:
        client.batches.create(
            input_file_id=file_id,
            endpoint="/v1/responses",
            completion_window="24h",
            extra_body={"window": "25:00-26:00"},
        )
    assert refused.value.body["param"] == "window"  # type: ignore[index]
    # a budget too small for one call: nothing is sent, and the batch says why
    created = client.batches.create(
        input_file_id=file_id,
        endpoint="/v1/responses",
        completion_window="24h",
        extra_body={"max_cost_usd": 0.000001, "priority": "interactive"},
    )
    shown = created.to_dict()
    assert (shown["max_cost_usd"], shown["priority"], shown["reuse"]) == (
        1e-06,
        "interactive",
        False,
    )
    batch = wait_ended(api_server, client, created.id)
    assert batch.status == "completed"
    assert batch.request_counts is not None and batch.request_counts.failed == 6
    assert batch.errors is not None and batch.errors.data is not None
    assert [e.code for e in batch.errors.data] == ["budget_exceeded"]
    assert batch.error_file_id
    errors = jsonl(client.files.content(batch.error_file_id).content)
    assert {line["error"]["code"] for line in errors} == {"budget_exceeded"}


def test_batches_list_pages_newest_first_with_limit_and_after(api_server: ApiServer) -> None:
    client = api_server.client(api_server.key("pages"))
    made = [submit(client, batch_file(1, f"page{i}")[0]).id for i in range(5)]
    newest_first = list(reversed(made))

    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == newest_first[:2]
    assert first.has_more is True
    second = client.batches.list(limit=2, after=first.data[-1].id)
    assert [b.id for b in second.data] == newest_first[2:4]
    last = client.batches.list(limit=2, after=second.data[-1].id)
    assert [b.id for b in last.data] == newest_first[4:]
    assert last.has_more is False
    # the SDK's own pagination follows after/has_more to the end
    assert [b.id for b in client.batches.list(limit=2)] == newest_first
    raw = client.batches.with_raw_response.list(limit=3).http_response.json()
    assert (raw["first_id"], raw["last_id"]) == (newest_first[0], newest_first[2])


def test_cancel_keeps_finished_results_and_lists_the_rest_as_batch_cancelled(
    api_server: ApiServer,
) -> None:
    client = api_server.client(api_server.key("cancel"))
    content, prompts = batch_file(40, "cancel", slow_from=3, slow_ms=1000)
    batch_id = submit(client, content).id
    wait_for(
        lambda: client.batches.retrieve(batch_id).request_counts.completed >= 3,  # type: ignore[union-attr]
        30,
        "the first results",
    )

    cancelled = client.batches.cancel(batch_id)

    assert cancelled.status in ("cancelling", "cancelled")
    assert cancelled.cancelling_at is not None
    batch = wait_ended(api_server, client, batch_id, 30)
    assert batch.status == "cancelled" and batch.cancelled_at is not None
    assert batch.output_file_id and batch.error_file_id
    output = jsonl(client.files.content(batch.output_file_id).content)
    errors = jsonl(client.files.content(batch.error_file_id).content)
    assert len(output) >= 3 and errors
    check_every_line_answers_its_own_request(output, prompts)
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
    assert sorted(line["custom_id"] for line in output + errors) == sorted(prompts)
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (
        len(output),
        len(errors),
    )


def test_another_owner_is_answered_404_for_every_object_and_sees_none_in_lists(
    api_server: ApiServer,
) -> None:
    owner_key = api_server.key("alice")
    alice = api_server.client(owner_key)
    bob_key = api_server.key("bob")
    bob = api_server.client(bob_key)
    batch = submit(alice, batch_file(2, "alice")[0])
    file_id = batch.input_file_id
    with api_server.http(owner_key) as http:
        job_id = http.post("/v1/jobs", json={"body": {"model": MODEL, "input": "hi"}}).json()["id"]

    for call in (
        lambda: bob.batches.retrieve(batch.id),
        lambda: bob.batches.cancel(batch.id),
        lambda: bob.files.retrieve(file_id),
        lambda: bob.files.content(file_id),
        lambda: bob.files.delete(file_id),
        lambda: bob.batches.create(
            input_file_id=file_id, endpoint="/v1/responses", completion_window="24h"
        ),
    ):
        with pytest.raises(openai.NotFoundError) as refused:
            call()
        assert refused.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert list(bob.batches.list()) == []
    assert list(bob.files.list()) == []
    with api_server.http(bob_key) as http:
        for path in (f"/v1/batches/{batch.id}/results", f"/v1/jobs/{job_id}"):
            answer = http.get(path)
            assert answer.status_code == 404
            assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
        assert http.get("/v1/jobs").json()["data"] == []
    # another key of the same owner sees everything
    second = api_server.client(api_server.key("alice-2", "--owner", "alice"))
    assert second.batches.retrieve(batch.id).id == batch.id
    assert file_id in [f.id for f in second.files.list()]


def test_requests_without_a_valid_key_are_answered_401_in_openais_envelope(
    api_server: ApiServer,
) -> None:
    with api_server.http() as anonymous:
        assert anonymous.get("/healthz").json() == {"status": "ok"}
        for method, path in (("GET", "/v1/batches"), ("POST", "/v1/files"), ("GET", "/v1/jobs/x")):
            answer = anonymous.request(method, path)
            assert answer.status_code == 401
            error = answer.json()["error"]
            assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")
            assert answer.headers["www-authenticate"] == "Bearer"
    with pytest.raises(openai.AuthenticationError):
        api_server.client("pq-not-a-key").batches.list()

    key = api_server.key("revoked")
    assert list(api_server.client(key).batches.list()) == []
    revoked = api_server.cli("keys", "revoke", "revoked")
    assert revoked.returncode == 0, revoked.stderr
    with pytest.raises(openai.AuthenticationError):
        api_server.client(key).batches.list()
    listed = api_server.cli("keys", "list").stdout
    assert key[:11] in listed and key not in listed


def test_a_file_with_bad_lines_ends_the_batch_failed_with_each_line_and_nothing_runs(
    api_server: ApiServer,
) -> None:
    client = api_server.client(api_server.key("bad"))
    good, _ = batch_file(3, "bad")
    content = (
        good
        + b'{"custom_id": "bad-001", "method": "POST", "url": "/v1/responses", '
        + b'"body": {"model": "m"}}\n'
        + b"not json\n"
        + b'{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", '
        + b'"body": {"model": "m", "messages": []}}\n'
    )

    batch = submit(client, content)

    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.errors is not None and batch.errors.data is not None
    found = [(e.line, e.code) for e in batch.errors.data]
    assert found == [(4, "duplicate_custom_id"), (5, "invalid_json"), (6, "mismatched_url")]
    assert all(e.message for e in batch.errors.data)
    assert batch.request_counts is not None and batch.request_counts.total == 0
    assert batch.output_file_id is None and batch.error_file_id is None
    assert client.batches.retrieve(batch.id).status == "failed"
    database = api_server.env["PROMPTQ_DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(database) as db:
        stored = db.execute("SELECT count(*) FROM requests WHERE batch_id = ?", (batch.id,))
        assert stored.fetchone() == (0,)


def test_an_upload_over_the_limit_is_answered_413_and_nothing_is_kept(
    api_server: ApiServer,
) -> None:
    client = api_server.client(api_server.key("big"))
    too_big = b"x" * (UPLOAD_LIMIT_BYTES + 1)
    stored = api_server.data_dir / "files"
    before = set(stored.glob("*"))

    with pytest.raises(openai.APIStatusError) as refused:
        client.files.create(file=("big.jsonl", too_big), purpose="batch")

    assert refused.value.status_code == 413
    assert refused.value.code == "file_too_large"  # type: ignore[attr-defined]
    assert list(client.files.list()) == []
    assert set(stored.glob("*")) == before
    exactly = client.files.create(file=("ok.jsonl", too_big[:-1]), purpose="batch")
    assert exactly.bytes == UPLOAD_LIMIT_BYTES


def test_files_are_listed_retrieved_downloaded_and_deleted(api_server: ApiServer) -> None:
    client = api_server.client(api_server.key("files"))
    content, _ = batch_file(2, "files")
    first = client.files.create(file=("a.jsonl", content), purpose="batch")
    second = client.files.create(file=("dir/b.jsonl", content), purpose="batch")

    assert (first.object, first.purpose, first.bytes, first.filename) == (
        "file",
        "batch",
        len(content),
        "a.jsonl",
    )
    assert second.filename == "b.jsonl"
    assert [f.id for f in client.files.list()] == [second.id, first.id]
    assert [f.id for f in client.files.list(order="asc", limit=1)] == [first.id, second.id]
    assert client.files.retrieve(first.id).bytes == len(content)
    assert client.files.content(first.id).content == content

    assert client.files.delete(first.id).deleted is True

    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(first.id)
    assert [f.id for f in client.files.list()] == [second.id]
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(file=("c.jsonl", content), purpose="fine-tune")
    assert refused.value.param == "purpose"  # type: ignore[attr-defined]


def test_a_single_job_is_answered_by_long_poll_and_accounted_like_a_batch_request(
    api_server: ApiServer,
) -> None:
    key = api_server.key("jobs")
    client = api_server.client(key)
    body = {"model": MODEL, "input": "one job, inline"}

    queued = client.post("/jobs", body={"body": body, "custom_id": "j1"}, cast_to=object)
    assert isinstance(queued, dict) and queued["object"] == "job"
    assert queued["status"] in ("queued", "running", "succeeded")

    started = time.monotonic()
    done = client.get(f"/jobs/{queued['id']}", options={"params": {"wait": 30}}, cast_to=object)
    assert isinstance(done, dict)
    assert time.monotonic() - started < 20  # answered when it ended, not at the timeout
    assert done["status"] == "succeeded", done
    assert answer_text(done["response"]["body"]) == "ECHO: one job, inline"
    assert done["usage"]["total_tokens"] > 0 and done["usage"]["reasoning_tokens"] > 0
    assert done["cost_usd"] > 0 and done["custom_id"] == "j1" and done["finished_at"]

    slow = {"model": MODEL, "input": "slow job #sim:latency_ms=3000"}
    started = time.monotonic()
    pending = client.post(
        "/jobs", body={"body": slow}, options={"params": {"wait": 0.5}}, cast_to=object
    )
    assert isinstance(pending, dict)
    assert 0.4 < time.monotonic() - started < 2.5  # the long poll timed out
    assert pending["status"] in ("queued", "running") and pending["response"] is None

    with api_server.workers_paused():
        waiting = client.post("/jobs", body={"body": body}, cast_to=object)
        assert isinstance(waiting, dict) and waiting["status"] == "queued"
        cancelled = client.post(f"/jobs/{waiting['id']}/cancel", cast_to=object)
    assert isinstance(cancelled, dict) and cancelled["status"] == "cancelled"
    assert cancelled["error"]["code"] == "batch_cancelled"

    listed = client.get("/jobs", cast_to=object)
    assert isinstance(listed, dict)
    assert [j["id"] for j in listed["data"]] == [waiting["id"], pending["id"], queued["id"]]
    assert list(client.batches.list()) == []  # a job is not a batch
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        client.post("/jobs", body={"body": {"input": "no model"}}, cast_to=object)
    assert refused.value.param == "body.model"  # type: ignore[attr-defined]


def test_the_whole_flow_runs_on_postgresql(postgres_api_server: ApiServer) -> None:
    server = postgres_api_server
    client = server.client(server.key("pg"))
    content, prompts = batch_file(30, "pg", rejected=2)
    created = submit(client, content, completion_window="1h")
    assert created.completion_window == "1h"

    batch = wait_ended(server, client, created.id)

    assert batch.status == "completed", batch
    assert batch.request_counts is not None and batch.request_counts.completed == 28
    assert batch.output_file_id and batch.error_file_id
    output = jsonl(client.files.content(batch.output_file_id).content)
    errors = jsonl(client.files.content(batch.error_file_id).content)
    check_every_line_answers_its_own_request(output, prompts)
    assert sorted(line["custom_id"] for line in output + errors) == sorted(prompts)
    assert [b.id for b in client.batches.list(limit=1)] == [batch.id]
    job = client.post(
        "/jobs",
        body={"body": {"model": MODEL, "input": "on postgres"}},
        options={"params": {"wait": 30}},
        cast_to=object,
    )
    assert isinstance(job, dict) and job["status"] == "succeeded", job
    assert server.errors() == []


# -- property-based: every request the OpenAPI document allows -------------------------------

LONG_POLL_CAP_S = 0.2


@pytest.fixture(scope="module")
def api_schema(api_server: ApiServer) -> Any:
    loaded = schemathesis.openapi.from_url(api_server.root_url + "/openapi.json")
    # the key is sent with every request, not generated; unknown query parameters are
    # ignored, as OpenAI's API ignores them
    loaded.config.generation.update(with_security_parameters=False, allow_extra_parameters=False)
    return loaded


@pytest.fixture(scope="module")
def schema_key(api_server: ApiServer) -> str:
    return api_server.key("schemathesis")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=12, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_no_request_the_schema_allows_gets_a_500_or_an_answer_outside_the_schema(
    case: Any, api_server: ApiServer, schema_key: str
) -> None:
    wait = (case.query or {}).get("wait")
    if isinstance(wait, int | float) and not isinstance(wait, bool):
        case.query["wait"] = min(wait, LONG_POLL_CAP_S)  # a long poll would spend the budget
    case.call_and_validate(
        base_url=api_server.root_url, headers={"Authorization": f"Bearer {schema_key}"}
    )
