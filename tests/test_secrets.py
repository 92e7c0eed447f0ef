"""The upstream key never leaves the Authorization header: not into the database, the
result files, the logs or anything else under the data dir, even when the upstream echoes
it back in its error bodies, its headers or a body that is not JSON at all."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import LargeBinary, column, create_engine, inspect, select, table

from tests.deploy import promptq

MODEL = "o1-mini-2024-09-12"


class EchoingUpstream:
    """An OpenAI-compatible upstream that quotes the caller's Authorization header back in
    every way a careless proxy might; a `#echo:KIND` marker in the prompt picks the way."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        self.authorizations: set[str] = set()
        self.loop = asyncio.new_event_loop()
        self.base_url = ""
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="echo-upstream", daemon=True)

    def __enter__(self) -> EchoingUpstream:
        self._thread.start()
        assert self._ready.wait(10), "the echoing upstream did not start"
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/v1/responses", self.respond)
        self._runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}/v1"
        self._ready.set()
        self.loop.run_forever()

    async def respond(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        self.authorizations.add(auth)
        key = auth.removeprefix("Bearer ")
        body = await request.json()
        prompt = body["input"]
        kind = prompt.split("#echo:")[1] if "#echo:" in prompt else "none"
        self.seen[prompt] = attempt = self.seen.get(prompt, 0) + 1
        echo = {"Authorization": auth, "headers": dict(request.headers), "key": key}

        def error(status: int, code: str, **headers: str) -> web.Response:
            envelope = {
                "error": {
                    "message": f"Incorrect API key provided: {key}. You sent {auth}.",
                    "type": f"invalid_request_error {key}",
                    "param": key,
                    "code": code,
                    "echo": echo,
                }
            }
            return web.json_response(envelope, status=status, headers=headers)

        if kind == "401":
            return error(401, "invalid_api_key")
        if kind == "400":
            return error(400, "invalid_value")
        if kind == "400-header":
            return error(400, "invalid_value", **{"x-request-id": f"req_{key}"})
        if kind == "500-once" and attempt == 1:
            return error(500, "server_error")
        if kind == "429-once" and attempt == 1:
            return error(429, "rate_limit_exceeded", **{"retry-after-ms": "10"})
        if kind == "malformed-once" and attempt == 1:
            return web.Response(text=f"<html>proxy error for {auth}</html>", status=200)
        text = f"ECHO: {prompt}"
        answer = {
            "id": f"resp_{secrets.token_hex(8)}",
            "object": "response",
            "model": body["model"],
            "status": "completed",
            "output": [
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text}],
                }
            ],
            "usage": {
                "input_tokens": 10,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 5,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 15,
            },
        }
        return web.json_response(answer, headers={"x-request-id": f"req_{secrets.token_hex(6)}"})


@pytest.fixture
def echoing_upstream() -> Iterator[EchoingUpstream]:
    with EchoingUpstream() as upstream:
        yield upstream


ECHO_KINDS = {
    # marker -> how the request must end
    "401": "failed",
    "400": "failed",
    "400-header": "failed",
    "500-once": "succeeded",
    "429-once": "succeeded",
    "malformed-once": "succeeded",
    "none": "succeeded",
}


def text_columns(url: str) -> Iterator[tuple[str, str, Any]]:
    """(table, column, value) for every value of every column that can hold text."""
    engine = create_engine(url)
    try:
        inspector = inspect(engine)
        with engine.connect() as conn:
            for name in inspector.get_table_names():
                for col in inspector.get_columns(name):
                    kind = col["type"]
                    python_type: Any
                    try:
                        python_type = kind.python_type
                    except NotImplementedError:
                        python_type = object
                    if python_type in (int, float, bool) and not isinstance(kind, LargeBinary):
                        continue
                    stmt = select(column(col["name"])).select_from(table(name))
                    for (value,) in conn.execute(stmt):
                        yield name, col["name"], value
    finally:
        engine.dispose()


def test_the_upstream_key_is_never_written_anywhere_even_when_the_upstream_echoes_it(
    tmp_path: Path, echoing_upstream: EchoingUpstream
) -> None:
    key = "sk-promptq-secret-" + secrets.token_hex(16)
    needles = [key.encode(), key.removeprefix("sk-promptq-secret-").encode()]
    path = tmp_path / "in.jsonl"
    with path.open("w") as f:
        for i, kind in enumerate(list(ECHO_KINDS) * 3):
            body = {"model": MODEL, "input": f"prompt {i} #echo:{kind}"}
            line = {"custom_id": f"r{i}-{kind}", "method": "POST", "url": "/v1/responses"}
            f.write(json.dumps({**line, "body": body}) + "\n")
    data_dir = tmp_path / "data"
    env = {
        "COMETAPI_API_KEY": key,
        "PROMPTQ_UPSTREAM_BASE_URL": echoing_upstream.base_url,
        "PROMPTQ_DATA_DIR": str(data_dir),
        "PROMPTQ_SWEEP_INTERVAL_S": "0.5",
        # everything a worker can say
        "PROMPTQ_LOG_LEVEL": "DEBUG",
    }
    done = promptq("run", "in.jsonl", "-o", "out.jsonl", env=env, cwd=tmp_path, timeout_s=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert echoing_upstream.authorizations == {f"Bearer {key}"}  # it was sent, where it belongs

    outputs = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    errors = [json.loads(line) for line in (tmp_path / "out.errors.jsonl").read_text().splitlines()]
    ended = {line["custom_id"]: "succeeded" for line in outputs}
    ended |= {line["custom_id"]: "failed" for line in errors}
    assert ended == {cid: ECHO_KINDS[cid.split("-", 1)[1]] for cid in ended}
    assert len(ended) == 3 * len(ECHO_KINDS)
    # the upstream's explanations survive, with the key taken out
    assert any("Incorrect API key provided: [redacted]" in e["error"]["message"] for e in errors)

    found = [
        f"{name}.{col}"
        for name, col, value in text_columns(f"sqlite:///{data_dir / 'promptq.db'}")
        if value is not None
        and any(n in (value if isinstance(value, bytes) else str(value).encode()) for n in needles)
    ]
    assert found == [], f"the key is stored in {found}"
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".log" for p in files) and any(p.name == "promptq.db" for p in files)
    leaked = [str(p) for p in files if any(n in p.read_bytes() for n in needles)]
    leaked += [name for name, out in (("stdout", done.stdout), ("stderr", done.stderr))
               if any(n.decode() in out for n in needles)]  # fmt: skip
    assert leaked == [], f"the key is written in {leaked}"
