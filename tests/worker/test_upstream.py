import asyncio
import json
import traceback
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager

import httpx
import pytest
from aiohttp import ClientSession, web
from httpx_aiohttp import AiohttpTransport

from worker.errors import (
    PermanentUpstreamError,
    RateLimitedError,
    RetryableUpstreamError,
    UpstreamError,
)
from worker.upstream import UpstreamAnswer, UpstreamClient, join_url, make_transport

KEY = "sk-test-0123456789abcdef"
BASE = "https://api.cometapi.com/v1"
Handler = (
    Callable[[httpx.Request], httpx.Response]
    | Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]
)


def responses_body(**extra: object) -> dict:
    usage = {"input_tokens": 12, "output_tokens": 30, "total_tokens": 42}
    return {"id": "resp_abc", "object": "response", "usage": usage, **extra}


def call(
    handler: Handler,
    body: bytes | dict | None = None,
    *,
    url_path: str = "/v1/responses",
    base_url: str = BASE,
    api_key: str | None = KEY,
    timeout_s: float = 600,
) -> UpstreamAnswer:
    async def scenario() -> UpstreamAnswer:
        transport = httpx.MockTransport(handler)
        async with UpstreamClient(
            base_url, api_key, timeout_s=timeout_s, transport=transport
        ) as client:
            return await client.call(url_path, {"model": "o1-mini"} if body is None else body)

    return asyncio.run(scenario())


def failure(handler: Handler, **kwargs: object) -> UpstreamError:
    with pytest.raises(UpstreamError) as caught:
        call(handler, **kwargs)  # type: ignore[arg-type]
    return caught.value


def answering(status: int, **kwargs: object) -> Handler:
    return lambda request: httpx.Response(status, **kwargs)  # type: ignore[arg-type]


def raising(exc: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


def assert_key_absent(error: BaseException) -> None:
    text = "".join(traceback.format_exception(error)) + repr(error)
    text += json.dumps(getattr(error, "body", None), default=str)
    assert KEY not in text


@pytest.mark.parametrize(
    ("base_url", "url_path", "expected"),
    [
        ("https://api.cometapi.com/v1", "/v1/responses", "https://api.cometapi.com/v1/responses"),
        ("https://api.cometapi.com/v1/", "/v1/responses", "https://api.cometapi.com/v1/responses"),
        (
            "https://api.cometapi.com/v1",
            "v1/chat/completions",
            "https://api.cometapi.com/v1/chat/completions",
        ),
        ("https://api.cometapi.com/v1", "/embeddings", "https://api.cometapi.com/v1/embeddings"),
        ("http://localhost:8000", "/v1/responses", "http://localhost:8000/v1/responses"),
        ("http://localhost:8000/", "/v1/responses", "http://localhost:8000/v1/responses"),
        ("https://gw.example/openai/v1", "/v1/responses", "https://gw.example/openai/v1/responses"),
        ("https://api.example/v1", "/v1beta/models", "https://api.example/v1/v1beta/models"),
    ],
)
def test_the_batch_url_is_joined_to_any_base_url(
    base_url: str, url_path: str, expected: str
) -> None:
    assert join_url(base_url, url_path) == expected
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json=responses_body())

    call(handler, base_url=base_url, url_path=url_path)
    assert seen == [expected]


@pytest.mark.parametrize(
    "url_path", ["//evil.example/steal", "/@evil.example/", "https://evil.example/"]
)
def test_a_crafted_url_cannot_send_the_key_to_another_host(url_path: str) -> None:
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return httpx.Response(404, json={"error": {"message": "no such route"}})

    failure(handler, url_path=url_path)
    assert hosts == ["api.cometapi.com"]


def test_body_bytes_are_sent_exactly_as_given() -> None:
    raw = b'{ "model" : "o1-mini",\n  "input": "caf\xc3\xa9", "n": 1.50 }'
    received: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        received.append(request)
        return httpx.Response(200, json=responses_body())

    call(handler, raw)
    assert received[0].content == raw
    assert received[0].method == "POST"
    assert received[0].headers["content-type"] == "application/json"


def test_a_dict_body_is_sent_as_json() -> None:
    received: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        received.append(request.content)
        return httpx.Response(200, json=responses_body())

    call(handler, {"model": "o1-mini", "input": "hi"})
    assert json.loads(received[0]) == {"model": "o1-mini", "input": "hi"}


@pytest.mark.parametrize(
    ("api_key", "expected"), [(KEY, f"Bearer {KEY}"), (None, None), ("", None)]
)
def test_the_bearer_header_is_sent_only_with_a_key(
    api_key: str | None, expected: str | None
) -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json=responses_body())

    call(handler, api_key=api_key)
    assert seen == [expected]


def test_a_2xx_gives_the_answer_with_usage_and_the_request_id_header() -> None:
    body = responses_body()
    answer = call(answering(200, json=body, headers={"x-request-id": "req_123"}))
    assert answer.status_code == 200
    assert answer.body == body
    assert answer.request_id == "req_123"
    assert answer.usage is not None and answer.usage.total_tokens == 42
    assert answer.latency_ms >= 0


def test_the_body_id_stands_in_for_a_missing_request_id_header() -> None:
    answer = call(answering(200, json={"id": "chatcmpl-9", "choices": []}))
    assert answer.request_id == "chatcmpl-9"
    assert answer.usage is None


def test_latency_covers_the_wait_for_the_answer() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.05)
        return httpx.Response(200, json=responses_body())

    assert call(slow).latency_ms >= 50


def test_a_400_is_permanent_and_says_what_the_upstream_said() -> None:
    envelope = {
        "error": {
            "message": "Unsupported parameter: 'temperature' is not supported with this model.",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": "unsupported_parameter",
        }
    }
    error = failure(answering(400, json=envelope, headers={"x-request-id": "req_400"}))
    assert isinstance(error, PermanentUpstreamError)
    assert str(error).startswith("upstream 400 invalid_request_error: Unsupported parameter")
    assert error.status_code == 400
    assert error.code == "unsupported_parameter"
    assert error.request_id == "req_400"
    assert error.body == envelope


def test_a_429_is_rate_limited_with_the_upstream_wait() -> None:
    error = failure(
        answering(429, json={"error": {"message": "slow down"}}, headers={"retry-after-ms": "750"})
    )
    assert isinstance(error, RateLimitedError)
    assert error.retry_after_s == 0.75


@pytest.mark.parametrize("status", [408, 500, 502, 503])
def test_a_server_error_is_retryable(status: int) -> None:
    error = failure(answering(status, text="<html>Bad Gateway</html>"))
    assert type(error) is RetryableUpstreamError
    assert str(error) == f"upstream {status}: <html>Bad Gateway</html>"


def test_a_500_invalid_request_is_permanent() -> None:
    body = {"error": {"message": "bad model", "type": "comet_api_error", "code": "invalid_request"}}
    assert isinstance(failure(answering(500, json=body)), PermanentUpstreamError)


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (
            httpx.ReadTimeout("timed out"),
            "upstream timed out after 600 s while waiting for the answer",
        ),
        (httpx.ConnectTimeout("timed out"), "upstream timed out after 600 s while connecting"),
        (
            httpx.PoolTimeout("timed out"),
            "upstream timed out after 600 s while waiting for a free connection",
        ),
        (
            httpx.ConnectError("[Errno 111] Connection refused"),
            "could not connect to upstream: [Errno 111] Connection refused",
        ),
        (
            httpx.RemoteProtocolError("Server disconnected without sending a response."),
            "connection dropped by upstream: Server disconnected without sending a response.",
        ),
        (
            httpx.ReadError("[Errno 104] Connection reset by peer"),
            "connection reset: [Errno 104] Connection reset by peer",
        ),
        (httpx.WriteError("broken pipe"), "connection reset: broken pipe"),
    ],
)
def test_transport_failures_are_retryable_and_say_what_happened(
    exc: Exception, message: str
) -> None:
    error = failure(raising(exc))
    assert type(error) is RetryableUpstreamError
    assert str(error) == message
    assert error.status_code is None


def test_a_call_that_outlasts_its_timeout_is_retryable() -> None:
    async def never(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(10)
        raise AssertionError("unreachable")

    error = failure(never, timeout_s=0.05)
    assert type(error) is RetryableUpstreamError
    assert str(error) == "upstream timed out after 0.05 s"


def test_an_unusable_base_url_is_permanent() -> None:
    error = failure(
        raising(httpx.UnsupportedProtocol("Request URL has an unsupported protocol 'ftp://'."))
    )
    assert isinstance(error, PermanentUpstreamError)


@pytest.mark.parametrize(
    "content",
    [b"<html>gateway hiccup</html>", b'{"id": "resp_1", "output": [', b"[1, 2]", b"", b"null"],
)
def test_a_2xx_without_a_json_object_body_is_retryable(content: bytes) -> None:
    error = failure(answering(200, content=content))
    assert type(error) is RetryableUpstreamError
    assert str(error).startswith("unparseable body from upstream (status 200")


def test_the_key_never_appears_in_an_error_even_when_the_upstream_echoes_it() -> None:
    echoed = {
        "error": {"message": f"Incorrect API key provided: {KEY}", "type": "invalid_request_error"}
    }
    errors = [
        failure(answering(401, json=echoed)),
        failure(answering(200, text=f"<pre>Authorization: Bearer {KEY}</pre>")),
        failure(answering(503, text=f"upstream saw key {KEY}")),
        failure(raising(httpx.ConnectError(f"proxy refused Bearer {KEY}"))),
        failure(raising(httpx.ReadTimeout("timed out"))),
    ]
    for error in errors:
        assert_key_absent(error)
    assert "Incorrect API key provided: [redacted]" in str(errors[0])


def test_a_request_id_header_that_echoes_the_key_is_redacted() -> None:
    answer = call(answering(200, json=responses_body(), headers={"x-request-id": f"req-{KEY}-1"}))
    assert answer.request_id == "req-[redacted]-1"


def test_the_client_repr_does_not_show_the_key() -> None:
    client = UpstreamClient(BASE, KEY, timeout_s=1, transport=httpx.MockTransport(answering(200)))
    assert KEY not in repr(client)
    asyncio.run(client.aclose())


def test_both_transport_kinds_are_available() -> None:
    async def scenario() -> None:
        aiohttp_transport = make_transport("aiohttp", max_connections=200)
        httpx_transport = make_transport("httpx", max_connections=200)
        assert isinstance(aiohttp_transport, AiohttpTransport)
        assert aiohttp_transport.limits.max_connections == 200
        assert isinstance(httpx_transport, httpx.AsyncHTTPTransport)
        await aiohttp_transport.aclose()
        await httpx_transport.aclose()

    asyncio.run(scenario())
    with pytest.raises(ValueError, match="unknown transport kind 'curl'"):
        make_transport("curl", max_connections=1)


@asynccontextmanager
async def local_upstream() -> AsyncIterator[str]:
    """A tiny OpenAI-like server on a free port of 127.0.0.1; yields its base URL."""

    async def responses(request: web.Request) -> web.Response:
        body = await request.json()
        echo = {"authorization": request.headers.get("Authorization"), "model": body["model"]}
        return web.json_response(responses_body(echo=echo), headers={"x-request-id": "req_local"})

    async def drop(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()  # hang up without an answer
        return web.Response()

    app = web.Application()
    app.router.add_post("/v1/responses", responses)
    app.router.add_post("/v1/drop", drop)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}/v1"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("kind", ["default", "httpx"])
def test_a_real_call_and_a_dropped_connection_over_a_socket(kind: str) -> None:
    async def scenario() -> tuple[UpstreamAnswer, UpstreamError]:
        async with local_upstream() as base_url:
            transport = None if kind == "default" else make_transport(kind, max_connections=8)
            async with UpstreamClient(base_url, KEY, timeout_s=10, transport=transport) as client:
                answer = await client.call("/v1/responses", b'{"model": "o1-mini-2024-09-12"}')
                with pytest.raises(UpstreamError) as caught:
                    await client.call("/v1/drop", {"model": "o1-mini"})
                return answer, caught.value

    answer, dropped = asyncio.run(scenario())
    assert answer.status_code == 200
    assert answer.request_id == "req_local"
    assert answer.body["echo"] == {"authorization": f"Bearer {KEY}", "model": "o1-mini-2024-09-12"}
    assert answer.usage is not None and answer.usage.input_tokens == 12
    assert type(dropped) is RetryableUpstreamError
    assert str(dropped).startswith("connection dropped by upstream: Server disconnected")
    assert_key_absent(dropped)


@pytest.mark.parametrize("kind", ["default", "httpx"])
def test_a_refused_connection_over_a_socket_is_retryable(kind: str) -> None:
    async def scenario() -> UpstreamError:
        async with local_upstream() as base_url:
            pass  # the port is free again: nothing listens there now
        transport = None if kind == "default" else make_transport(kind, max_connections=8)
        async with UpstreamClient(base_url, KEY, timeout_s=10, transport=transport) as client:
            with pytest.raises(UpstreamError) as caught:
                await client.call("/v1/responses", {"model": "o1-mini"})
            return caught.value

    error = asyncio.run(scenario())
    assert type(error) is RetryableUpstreamError
    assert str(error).startswith("could not connect to upstream")


def test_closing_the_client_closes_the_aiohttp_session_it_opened() -> None:
    transport = make_transport("aiohttp", max_connections=8)

    async def scenario() -> None:
        async with (
            local_upstream() as base_url,
            UpstreamClient(base_url, KEY, timeout_s=10, transport=transport) as client,
        ):
            await client.call("/v1/responses", {"model": "o1-mini"})

    asyncio.run(scenario())
    # An unclosed session only warns from __del__, which the test run may not surface.
    assert isinstance(transport, AiohttpTransport)
    assert isinstance(transport.client, ClientSession) and transport.client.closed
