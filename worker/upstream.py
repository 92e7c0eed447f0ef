"""The async client for the OpenAI-compatible upstream.

It turns every outcome of one call into either an `UpstreamAnswer` or one of
the errors in `worker.errors`, so tasks never see HTTP. The API key goes into
the Authorization header and nowhere else: every text we put in an error is
scrubbed of it, in case an upstream echoes it back.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from worker.errors import PermanentUpstreamError, RetryableUpstreamError, UpstreamError
from worker.retry import classify
from worker.usage import Usage, parse_usage

_REDACTED = "[redacted]"
_SNIPPET_CHARS = 200
_TIMEOUT_PHASES: dict[type[httpx.TimeoutException], str] = {
    httpx.ConnectTimeout: "connecting",
    httpx.ReadTimeout: "waiting for the answer",
    httpx.WriteTimeout: "sending the request",
    httpx.PoolTimeout: "waiting for a free connection",
}


@dataclass(frozen=True)
class UpstreamAnswer:
    """A 2xx answer with a JSON object body."""

    status_code: int
    body: dict[str, Any]
    request_id: str | None
    latency_ms: float
    usage: Usage | None


def make_transport(kind: str = "aiohttp", *, max_connections: int) -> httpx.AsyncBaseTransport:
    """An httpx transport: "aiohttp" (cheap at hundreds of connections) or "httpx" (its pool)."""
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    if kind == "aiohttp":
        # Its aiohttp session (TCPConnector(limit=max_connections)) is made on the first
        # request, inside the running loop, and closed by the transport's aclose().
        return AiohttpTransport(limits=limits)
    if kind == "httpx":
        return httpx.AsyncHTTPTransport(limits=limits)
    raise ValueError(f"unknown transport kind {kind!r}: expected 'aiohttp' or 'httpx'")


def join_url(base_url: str, url_path: str) -> str:
    """`base_url` + a batch line's url, which repeats the `/v1` the base already ends with."""
    base = base_url.rstrip("/")
    path = "/" + url_path.lstrip("/")
    if base.endswith("/v1") and (path == "/v1" or path.startswith("/v1/")):
        path = path[len("/v1") :]
    # Plain concatenation keeps the host the base's whatever the path holds, so the key
    # cannot be sent elsewhere by a crafted url such as "//evil.example/".
    return base + path


class UpstreamClient:
    """Calls one upstream with a shared connection pool; use it as an async context manager."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout_s: float,
        max_connections: int = 256,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._base_url = base_url
        self._api_key = api_key or None
        self._timeout_s = timeout_s
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        self._http = httpx.AsyncClient(
            transport=transport or make_transport("aiohttp", max_connections=max_connections),
            headers=headers,
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"UpstreamClient({self._base_url!r}, timeout_s={self._timeout_s})"

    async def __aenter__(self) -> UpstreamClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def call(self, url_path: str, body: bytes | dict[str, Any]) -> UpstreamAnswer:
        """POST `body` to `url_path`; raise `RetryableUpstreamError` or `PermanentUpstreamError`."""
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        url = join_url(self._base_url, url_path)
        started = time.perf_counter()
        response = await self._post(url, content)
        if isinstance(response, UpstreamError):
            raise response
        latency_ms = (time.perf_counter() - started) * 1000
        request_id = response.headers.get("x-request-id")
        if request_id is not None:  # an upstream (or a proxy) may echo what it was sent
            request_id = self._redact(request_id)

        text = response.content.decode("utf-8", "replace")
        if not response.is_success:  # an error body may quote our request, key included
            text = self._redact(text)
        parsed = _json_or_text(text)
        if (error := classify(response.status_code, parsed, response.headers)) is not None:
            raise error
        if not isinstance(parsed, dict):
            snippet = self._redact(_snippet(response.content))
            raise RetryableUpstreamError(
                f"unparseable body from upstream (status {response.status_code},"
                f" {len(response.content)} bytes): {snippet}",
                status_code=response.status_code,
                request_id=request_id,
            )
        if request_id is None and isinstance(parsed.get("id"), str):
            request_id = parsed["id"]
        return UpstreamAnswer(
            status_code=response.status_code,
            body=parsed,
            request_id=request_id,
            latency_ms=latency_ms,
            usage=parse_usage(parsed),
        )

    async def _post(self, url: str, content: bytes) -> httpx.Response | UpstreamError:
        """The answer, or the error standing for its absence.

        Returned, not raised, so that the httpx exception (whose text we do not
        control and which might quote the key) is not chained to the error.
        """
        try:
            # httpx's timeouts bound each phase; this bounds the whole call, so an
            # upstream that trickles bytes cannot hold a request past its lease.
            async with asyncio.timeout(self._timeout_s):
                return await self._http.post(url, content=content)
        except TimeoutError:
            return RetryableUpstreamError(f"upstream timed out after {self._timeout_s:g} s")
        except (httpx.TransportError, aiohttp.ClientError, OSError) as exc:
            return self._transport_error(exc)

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, _REDACTED) if self._api_key else text

    def _transport_error(self, exc: Exception) -> UpstreamError:
        """Name what went wrong below HTTP; all of it is worth a retry but a bad base URL."""
        # httpx-aiohttp maps every aiohttp connection error, even a refused or dropped one,
        # to httpx.ConnectTimeout: the aiohttp cause says what really happened.
        cause = exc.__cause__ if isinstance(exc.__cause__, aiohttp.ClientError) else exc
        detail = self._redact(str(cause) or type(cause).__name__)
        if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
            return PermanentUpstreamError(f"cannot send the request: {detail}")
        if isinstance(cause, TimeoutError | httpx.TimeoutException):
            phase = next(
                (text for cls, text in _TIMEOUT_PHASES.items() if isinstance(exc, cls)), None
            )
            during = f" while {phase}" if phase else ""
            return RetryableUpstreamError(f"upstream timed out after {self._timeout_s:g} s{during}")
        if isinstance(cause, httpx.ConnectError | aiohttp.ClientConnectorError):
            return RetryableUpstreamError(f"could not connect to upstream: {detail}")
        if isinstance(cause, httpx.RemoteProtocolError | aiohttp.ServerDisconnectedError):
            return RetryableUpstreamError(f"connection dropped by upstream: {detail}")
        if isinstance(cause, httpx.ReadError | httpx.WriteError | OSError | aiohttp.ClientError):
            return RetryableUpstreamError(f"connection reset: {detail}")
        return RetryableUpstreamError(f"upstream transport error: {detail}")


def _json_or_text(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _snippet(content: bytes) -> str:
    text = " ".join(content[: _SNIPPET_CHARS * 2].decode("utf-8", "replace").split())
    return repr(text[:_SNIPPET_CHARS]) + ("..." if len(content) > _SNIPPET_CHARS else "")
