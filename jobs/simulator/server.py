"""The simulator's HTTP server: OpenAI's endpoints, fault injection and the /_sim controls."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import random
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from jobs.lifeline import watch_parent
from jobs.simulator import answers
from jobs.simulator.answers import ApiError, Prompt
from jobs.simulator.config import SimConfig, config_from_argv
from jobs.simulator.faults import Fault, draw_fault, parse_directives, retry_headers, status_error
from jobs.simulator.stats import Stats

LISTENING_PREFIX = "promptq-simulator listening on "
MAX_BODY_BYTES = 64 * 1024 * 1024
LISTEN_BACKLOG = 2048
# Hung requests would otherwise hold a SIGTERM for aiohttp's default 60 s.
SHUTDOWN_TIMEOUT_S = 1.0
CLIENT_CLOSED_STATUS = 499
_JSON_HEADERS = {"Content-Type": "application/json"}


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _json_response(value: object, status: int = 200) -> web.Response:
    return web.Response(body=_dumps(value), status=status, headers=_JSON_HEADERS)


class Simulator:
    """The server's mutable state; every handler runs on one event loop, so no locks."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.stats = Stats()
        self._rng = random.Random(config.seed)
        self._attempts: dict[str, int] = {}
        # Only prompts long enough to be cached are remembered, which keeps this set small.
        self._seen_prompts: set[int] = set()
        self._id_prefix = os.urandom(4).hex()
        self._id_counter = itertools.count(1)
        self._storm_until = self._storm_deadline(config.rate_limit_for_s)

    @staticmethod
    def _storm_deadline(duration_s: float) -> float:
        return time.monotonic() + duration_s if duration_s > 0 else 0.0

    def configure(self, changes: dict[str, Any]) -> SimConfig:
        config = self.config.updated(changes)
        if "seed" in changes:
            self._rng.seed(config.seed)
        if "rate_limit_for_s" in changes:
            self._storm_until = self._storm_deadline(config.rate_limit_for_s)
        self.config = config
        return config

    def reset(self) -> None:
        """Forget stats, the log, attempt counts and cached prompts; the config stays."""
        self.stats.reset()
        self._attempts.clear()
        self._seen_prompts.clear()
        self._rng.seed(self.config.seed)

    def _next_hex(self) -> str:
        return f"{self._id_prefix}{next(self._id_counter):016x}"

    # -- /v1 endpoints -------------------------------------------------------------------

    async def responses(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, self._responses_answer)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, self._chat_answer)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, self._embeddings_answer)

    async def _serve(self, request: web.Request, answer: _Answerer) -> web.StreamResponse:
        stats = self.stats
        generation = stats.generation
        started_at = stats.enter()
        status: int | None = None
        body_sha = ""
        try:
            raw = await request.read()
            body_sha = hashlib.sha256(raw).hexdigest()
            try:
                response = await self._respond(request, raw, body_sha, answer)
            except ApiError as error:
                response = self._error_response(error)
            if response is None:
                return _reset_connection(request)
            status = response.status
            return response
        except asyncio.CancelledError:
            # The client gave up (timeout, disconnect): nginx's 499, not a reset we caused.
            status = CLIENT_CLOSED_STATUS
            raise
        except Exception:
            status = 500  # aiohttp answers a handler's crash with a 500; count it as one
            raise
        finally:
            stats.leave(generation, started_at, request.path, status, body_sha)

    async def _respond(
        self, request: web.Request, raw: bytes, body_sha: str, answer: _Answerer
    ) -> web.Response | None:
        """The answer, or None to drop the connection; quick rejections raise ApiError."""
        config = self.config
        key = config.require_key
        if key is not None and request.headers.get("Authorization") != f"Bearer {key}":
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
        if self._storm_until:
            if time.monotonic() < self._storm_until:
                raise status_error(429)
            self._storm_until = 0.0
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ApiError(
                400, "We could not parse the JSON body of your request.", code="invalid_json"
            )
        # Building the answer first validates the body, so a 400 wins over any fault.
        prompt, build = answer(body)
        directives = parse_directives(prompt.text)
        if directives.status is not None:
            error = status_error(directives.status, directives.code)
            if directives.status == 429:
                raise error
            await self._sleep_latency(directives.latency_ms)
            raise error
        fault: Fault | None = None
        if directives.fail is not None:
            attempt = self._attempts.get(body_sha, 0) + 1
            self._attempts[body_sha] = attempt
            if attempt <= directives.fail_times:
                fault = directives.fail
        if fault is None and config.fault_rate_total:
            fault = draw_fault(config, self._rng.random())
        if fault is Fault.TOO_MANY_REQUESTS:
            raise status_error(429)
        if fault is Fault.HANG:
            await asyncio.sleep(config.hang_s)
        else:
            await self._sleep_latency(directives.latency_ms)
        if fault is Fault.SERVER_ERROR or fault is Fault.UNAVAILABLE:
            raise status_error(int(fault))
        if fault is Fault.RESET:
            return None
        payload = _dumps(build())
        if fault is Fault.MALFORMED:
            # Half a JSON object is never valid JSON, and its Content-Length stays honest.
            payload = payload[: len(payload) // 2]
        return web.Response(
            body=payload,
            headers={"Content-Type": "application/json", "x-request-id": f"req_{self._next_hex()}"},
        )

    async def _sleep_latency(self, latency_ms: float | None) -> None:
        if latency_ms is None:
            config = self.config
            latency_ms = config.latency_ms
            if config.jitter_ms:
                latency_ms += self._rng.uniform(0.0, config.jitter_ms)
        if latency_ms > 0:
            await asyncio.sleep(latency_ms / 1000)

    def _error_response(self, error: ApiError) -> web.Response:
        headers = {"Content-Type": "application/json", "x-request-id": f"req_{self._next_hex()}"}
        if error.status == 429:
            headers.update(retry_headers(self.config.retry_after_s))
        return web.Response(body=_dumps(error.envelope()), status=error.status, headers=headers)

    # -- answer builders: validate now, build the body later (after faults and latency) ----

    def _usage(self, model: str, prompt: Prompt, answer: str) -> answers.Usage:
        input_tokens = answers.input_tokens_for(prompt.message_chars)
        seen_before = False
        if input_tokens >= answers.CACHE_MIN_TOKENS:
            key = answers.stable_hash(prompt.text)
            seen_before = key in self._seen_prompts
            self._seen_prompts.add(key)
        return answers.usage_for(model, prompt, answer, seen_before=seen_before)

    def _responses_answer(self, body: dict[str, Any]) -> tuple[Prompt, _Builder]:
        model = answers.require_model(body)
        prompt = answers.responses_prompt(body)
        answers.check_model_rules(model, body, prompt, "input")

        def build() -> dict[str, Any]:
            text = answers.answer_text(prompt.text)
            usage = self._usage(model, prompt, text)
            created_at = int(time.time())
            hex_id = self._next_hex()
            return answers.responses_body(f"resp_{hex_id}", hex_id, created_at, model, text, usage)

        return prompt, build

    def _chat_answer(self, body: dict[str, Any]) -> tuple[Prompt, _Builder]:
        model = answers.require_model(body)
        prompt = answers.chat_prompt(body)
        answers.check_model_rules(model, body, prompt, "messages")

        def build() -> dict[str, Any]:
            text = answers.answer_text(prompt.text)
            usage = self._usage(model, prompt, text)
            return answers.chat_body(
                f"chatcmpl-{self._next_hex()}", int(time.time()), model, text, usage
            )

        return prompt, build

    def _embeddings_answer(self, body: dict[str, Any]) -> tuple[Prompt, _Builder]:
        model = answers.require_model(body)
        inputs = answers.embedding_inputs(body)
        prompt = Prompt("\n".join(inputs), tuple(len(text) for text in inputs), ())
        return prompt, lambda: answers.embeddings_body(model, inputs)

    # -- controls (never counted, never faulty, never behind the API key) -------------------

    async def get_stats(self, request: web.Request) -> web.Response:
        return _json_response(self.stats.snapshot())

    async def post_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return _json_response({"ok": True})

    async def get_config(self, request: web.Request) -> web.Response:
        return _json_response(self.config.as_dict())

    async def post_configure(self, request: web.Request) -> web.Response:
        try:
            changes = json.loads(await request.read())
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object of SimConfig fields")
            config = self.configure(changes)
        except ValueError as error:
            envelope = ApiError(400, str(error), code="invalid_sim_config").envelope()
            return _json_response(envelope, status=400)
        return _json_response(config.as_dict())

    async def get_log(self, request: web.Request) -> web.Response:
        return _json_response(self.stats.log_entries())

    async def healthz(self, request: web.Request) -> web.Response:
        return _json_response({"status": "ok"})


_Builder = Callable[[], dict[str, Any]]
_Answerer = Callable[[dict[str, Any]], tuple[Prompt, _Builder]]
SIMULATOR_KEY = web.AppKey("simulator", Simulator)


def _reset_connection(request: web.Request) -> web.Response:
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linger 0 makes close() send an RST: the client sees a reset, not a clean EOF.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    # aiohttp finds the transport gone and writes nothing; the response only ends the handler.
    return web.Response(status=CLIENT_CLOSED_STATUS)


def build_app(config: SimConfig) -> web.Application:
    simulator = Simulator(config)
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[SIMULATOR_KEY] = simulator
    app.router.add_post("/v1/responses", simulator.responses)
    app.router.add_post("/v1/chat/completions", simulator.chat_completions)
    app.router.add_post("/v1/embeddings", simulator.embeddings)
    app.router.add_get("/_sim/stats", simulator.get_stats)
    app.router.add_post("/_sim/reset", simulator.post_reset)
    app.router.add_get("/_sim/config", simulator.get_config)
    app.router.add_post("/_sim/configure", simulator.post_configure)
    app.router.add_get("/_sim/log", simulator.get_log)
    app.router.add_get("/healthz", simulator.healthz)
    return app


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)


def listening_line(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{LISTENING_PREFIX}http://{shown}:{port}/v1"


async def serve(config: SimConfig) -> None:
    """Serve until SIGTERM or SIGINT, announcing the address on stdout first."""
    # Cancelling the handlers of departed clients keeps in_flight to clients still waiting.
    runner = web.AppRunner(
        build_app(config),
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    try:
        sock = _bind(config.host, config.port)
        await web.SockSite(runner, sock, backlog=LISTEN_BACKLOG).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)

        def stop_soon() -> None:  # from the lifeline's thread
            loop.call_soon_threadsafe(stop.set)

        watch_parent(stop_soon)
        print(listening_line(config.host, sock.getsockname()[1]), flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    config = config_from_argv(argv)
    try:
        asyncio.run(serve(config))
    except OSError as error:
        print(
            f"promptq-simulator: cannot listen on {config.host}:{config.port}: {error}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        pass  # a Ctrl-C before the handlers were installed
    return 0
