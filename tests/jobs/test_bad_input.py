"""The bad-input catalogue at the command line: `promptq submit` refuses each bad file with
exit 2, naming the file and the line, and leaves no trace in the database or the queue.

tests/jobs/test_validate.py covers the validator itself; these run the real command.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from jobs.validate import MAX_LINE_BYTES
from tests.deploy import promptq
from tests.services import PostgresServer, RedisServer

MODEL = "o1-mini-2024-09-12"
LONG_FILE_LINES = 100_000


def line(custom_id: object = "a", **over: object) -> bytes:
    obj: dict[str, object] = {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/responses",
        "body": {"model": MODEL, "input": f"prompt {custom_id}"},
    }
    obj.update(over)
    return json.dumps(obj).encode() + b"\n"


def good(*custom_ids: str) -> bytes:
    return b"".join(line(c) for c in custom_ids)


@dataclass(frozen=True)
class Bad:
    """A bad file: its bytes, the line the refusal must name (0: the whole file), and what
    the message must say."""

    name: str
    content: Callable[[], bytes]
    line: int
    says: str


CATALOGUE = [
    Bad("broken-json", lambda: good("a") + b'{"custom_id": "b", "method": \n', 2, "invalid JSON"),
    Bad("not-an-object", lambda: good("a") + b"[1, 2]\n", 2, "expected a JSON object"),
    Bad("a-string-line", lambda: good("a") + b'"text"\n', 2, "expected a JSON object"),
    Bad(
        "missing-custom-id",
        lambda: good("a") + json.dumps({"method": "POST", "url": "/v1/responses"}).encode() + b"\n",
        2,
        "'custom_id' must be a non-empty string",
    ),
    Bad("empty-custom-id", lambda: good("a") + line(""), 2, "'custom_id' must be a non-empty"),
    Bad("numeric-custom-id", lambda: good("a") + line(7), 2, "'custom_id' must be a non-empty"),
    Bad(
        "duplicate-custom-id",
        lambda: good("a", "b", "a"),
        3,
        "duplicate custom_id 'a' (first on line 1)",
    ),
    Bad(
        "wrong-method", lambda: good("a") + line("b", method="GET"), 2, "'method' must be \"POST\""
    ),
    Bad(
        "unknown-url",
        lambda: good("a") + line("b", url="/v1/completions"),
        2,
        "'url' '/v1/completions' is not one of",
    ),
    Bad(
        "urls-that-differ",
        lambda: good("a") + line("b", url="/v1/chat/completions"),
        2,
        "differs from the batch endpoint",
    ),
    Bad("body-not-an-object", lambda: good("a") + line("b", body="hi"), 2, "'body' must be a JSON"),
    Bad(
        "missing-model",
        lambda: good("a") + line("b", body={"input": "no model"}),
        2,
        "'body.model' must be a non-empty string",
    ),
    Bad("empty-file", lambda: b"", 0, "the file holds no requests"),
    Bad("only-blank-lines", lambda: b"\n   \n\t\n", 0, "the file holds no requests"),
    Bad(
        "non-utf8-bytes",
        lambda: good("a") + b'{"custom_id": "caf\xe9"}\n',
        2,
        "not valid UTF-8 at byte 18",
    ),
    Bad(
        "utf16-file",
        lambda: "\ufeff".encode("utf-16-le") + good("a").decode().encode("utf-16-le"),
        1,
        "not valid UTF-8",
    ),
    # only a BOM at the very start of the file is an editor's; anywhere else it is garbage
    Bad("bom-on-a-later-line", lambda: good("a") + b"\xef\xbb\xbf" + line("b"), 2, "invalid JSON"),
    Bad(
        "line-over-the-size-limit",
        lambda: good("a") + line("b", body={"model": MODEL, "input": "x" * MAX_LINE_BYTES}),
        2,
        f"over {MAX_LINE_BYTES}",
    ),
    Bad(
        "last-line-of-a-100000-line-file",
        lambda: b"".join(line(f"r{i}") for i in range(LONG_FILE_LINES)) + b'{"broken"\n',
        LONG_FILE_LINES + 1,
        "invalid JSON",
    ),
]


def refused(path: Path, env: dict[str, str], bad: Bad) -> None:
    """`promptq submit path` exits 2 naming the file and the line, and says nothing was sent."""
    done = promptq("submit", str(path), env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    where = f"{path}: line {bad.line}: " if bad.line else f"{path}: "
    assert where in done.stderr, done.stderr
    assert bad.says in done.stderr, done.stderr
    assert "Nothing was submitted." in done.stderr
    assert "Traceback" not in done.stderr
    assert not done.stdout.strip()  # no batch id


@pytest.mark.parametrize("bad", CATALOGUE, ids=[bad.name for bad in CATALOGUE])
def test_a_bad_file_is_refused_naming_its_line_and_creates_nothing(
    bad: Bad, tmp_path: Path, redis_url: str, redis_server: RedisServer
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(bad.content())
    data_dir = tmp_path / "data"
    refused(path, {"PROMPTQ_DATA_DIR": str(data_dir), "PROMPTQ_REDIS_URL": redis_url}, bad)
    assert not data_dir.exists()  # no SQLite database, no embedded Redis, no lock file
    assert redis_server.client().dbsize() == 0


def test_bad_files_leave_an_existing_database_and_queue_as_they_were(
    tmp_path: Path, redis_url: str, redis_server: RedisServer, postgres_server: PostgresServer
) -> None:
    env = {
        "PROMPTQ_DATA_DIR": str(tmp_path / "data"),
        "PROMPTQ_REDIS_URL": redis_url,
        "PROMPTQ_DATABASE_URL": postgres_server.create_database("bad_input"),
    }
    assert promptq("db", "upgrade", env=env).returncode == 0
    (tmp_path / "good.jsonl").write_bytes(good("a", "b", "c"))
    assert promptq("submit", str(tmp_path / "good.jsonl"), env=env).returncode == 0
    engine = create_engine(env["PROMPTQ_DATABASE_URL"])

    def state() -> tuple[object, ...]:
        with engine.connect() as conn:
            rows = tuple(
                conn.execute(text(f"SELECT count(*) FROM {table}")).scalar()
                for table in ("batches", "requests", "files")
            )
        with redis_server.client() as client:
            return rows, sorted(client.keys()), client.llen("promptq")

    before = state()
    assert before[0] == (1, 3, 0) and before[2] == 1

    def submit(bad: Bad) -> None:
        path = tmp_path / f"{bad.name}.jsonl"
        path.write_bytes(bad.content())
        refused(path, env, bad)

    try:
        with ThreadPoolExecutor(4) as pool:  # the same checks as above, so save the time
            list(pool.map(submit, CATALOGUE))
        assert state() == before
    finally:
        engine.dispose()


def test_blank_lines_are_skipped_and_a_leading_bom_is_accepted(
    tmp_path: Path, redis_url: str, redis_server: RedisServer
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + line("a") + b"\n  \n" + line("b") + b"\r\n\n" + line("c"))
    env = {"PROMPTQ_DATA_DIR": str(tmp_path / "data"), "PROMPTQ_REDIS_URL": redis_url}
    done = promptq("submit", str(path), env=env)
    assert done.returncode == 0, done.stderr
    assert "Queued 3 requests." in done.stderr
    batch = json.loads(promptq("status", done.stdout.split()[-1], "--json", env=env).stdout)
    assert batch["request_counts"] == {"total": 3, "completed": 0, "failed": 0}
    with sqlite3.connect(tmp_path / "data" / "promptq.db") as db:
        lines = db.execute("SELECT custom_id, line FROM requests ORDER BY line").fetchall()
    assert lines == [("a", 1), ("b", 4), ("c", 7)]  # skipped lines still count as lines
    assert redis_server.client().llen("promptq") == 1  # the three ids in one message


def test_a_missing_file_is_refused_and_creates_nothing(tmp_path: Path, redis_url: str) -> None:
    data_dir = tmp_path / "data"
    env = {"PROMPTQ_DATA_DIR": str(data_dir), "PROMPTQ_REDIS_URL": redis_url}
    done = promptq("submit", str(tmp_path / "nope.jsonl"), env=env)
    assert done.returncode == 2
    assert f"{tmp_path / 'nope.jsonl'}: no such file" in done.stderr
    assert not data_dir.exists()
