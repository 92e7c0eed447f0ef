"""Log lines, text or JSON: the JSON ones parse and carry the batch and request they are
about, and neither format ever shows the upstream key or a bearer token."""

from __future__ import annotations

import io
import json
import logging
import secrets
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from jobs.logs import configure_logging
from tests.apiserver import ApiServer
from tests.deploy import apply_env, reset_caches

KEY = "sk-live-" + secrets.token_hex(16)
# not a key promptq knows: caught by its shape
TOKEN = "tok_" + secrets.token_hex(16)


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[io.StringIO]:
    """What the root logger writes, with the upstream key set; the root is restored after."""
    apply_env(monkeypatch, {"COMETAPI_API_KEY": KEY, "PROMPTQ_DATA_DIR": str(tmp_path)})
    root = logging.getLogger()
    handlers, level, excepthook = root.handlers[:], root.level, sys.excepthook
    stream = io.StringIO()
    try:
        yield stream
    finally:
        logging.captureWarnings(False)
        sys.excepthook = excepthook
        root.handlers[:] = handlers
        root.setLevel(level)
        reset_caches()


def test_json_lines_parse_and_carry_the_batch_and_request_they_are_about(
    logs: io.StringIO,
) -> None:
    configure_logging("info", "json", stream=logs)

    log = logging.getLogger("worker.runtime")
    log.info("request %s done", "req_1", extra={"batch_id": "batch_1", "request_id": "req_1"})
    log.debug("not shown at INFO")
    try:
        raise RuntimeError("the upstream went away")
    except RuntimeError:
        log.exception("call failed", extra={"batch_id": "batch_1"})

    first, second = [json.loads(line) for line in logs.getvalue().splitlines()]
    assert first["ts"].endswith("+00:00") and "T" in first["ts"]
    assert first["level"] == "INFO"
    assert first["logger"] == "worker.runtime"
    assert first["message"] == "request req_1 done"
    assert (first["batch_id"], first["request_id"]) == ("batch_1", "req_1")
    assert second["level"] == "ERROR"
    assert "request_id" not in second
    assert "RuntimeError: the upstream went away" in second["exception"]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_the_upstream_key_and_bearer_tokens_never_reach_a_log_line(
    logs: io.StringIO, fmt: str
) -> None:
    configure_logging("INFO", fmt, stream=logs)

    log = logging.getLogger("worker.upstream")
    log.warning("upstream echoed our key: %s", KEY)
    log.warning("headers: {'authorization': 'Bearer %s'}", TOKEN)
    log.warning("a key-shaped string: sk-%s", secrets.token_hex(12))
    log.warning("connecting to postgresql+psycopg://promptq:hunter2hunter2@db/promptq")
    try:
        raise ValueError(f"bad answer quoting Authorization: Bearer {TOKEN} and {KEY}")
    except ValueError:
        log.exception("call failed")

    written = logs.getvalue()
    assert KEY not in written and KEY.removeprefix("sk-") not in written
    assert TOKEN not in written
    assert "hunter2" not in written
    assert "sk-" not in written.replace("sk-[", "")
    assert written.count("[redacted]") >= 6
    assert "Bearer [redacted]" in written
    if fmt == "json":
        assert all(json.loads(line) for line in written.splitlines())


def test_warnings_and_a_crashs_traceback_become_scrubbed_log_lines_too(
    logs: io.StringIO,
) -> None:
    configure_logging("INFO", "json", stream=logs)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a library complains", UserWarning, stacklevel=1)
    try:
        raise RuntimeError(f"crashed holding {KEY}")
    except RuntimeError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)

    warned, crashed = [json.loads(line) for line in logs.getvalue().splitlines()]
    assert warned["logger"] == "py.warnings" and "a library complains" in warned["message"]
    assert crashed["level"] == "CRITICAL"
    assert "RuntimeError: crashed holding [redacted]" in crashed["exception"]


def test_an_unknown_format_is_refused(logs: io.StringIO) -> None:
    with pytest.raises(ValueError, match="text, json"):
        configure_logging("INFO", "yaml", stream=logs)


def test_promptq_api_logs_json_lines_its_own_and_uvicorns(
    db: str, redis_url: str, tmp_path: Path
) -> None:
    env = {"PROMPTQ_REDIS_URL": redis_url, "PROMPTQ_LOG_FORMAT": "json", "COMETAPI_API_KEY": KEY}
    with ApiServer(env, tmp_path / "logs").start(workers=0) as api:
        httpx.get(
            api.root_url + "/v1/batches", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        )
        lines = api.log_path.read_text().splitlines()

    assert all(line.startswith("{") for line in lines), "\n".join(lines)
    records = [json.loads(line) for line in lines]
    loggers = {record["logger"] for record in records}
    assert {"uvicorn.error", "uvicorn.access"} <= loggers
    assert any("/v1/batches" in r["message"] and "401" in r["message"] for r in records)
    assert KEY not in "\n".join(lines) and TOKEN not in "\n".join(lines)
