"""The bad-input catalogue at the command line: `promptq submit` refuses each bad file with
exit 2, naming the file and the line, and leaves no trace in the database or the queue.

tests/jobs/test_validate.py covers the validator itself; these run the real command.
"""

from __future__ import annotations

import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.bad_inputs import CATALOGUE, Bad, good, line
from tests.deploy import promptq
from tests.services import PostgresServer, RedisServer


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


BAD_OPTIONS = [
    (("--window", "25:00-26:00"), "--window: '25:00-26:00' is not HH:MM-HH:MM"),
    (("--window", "09:00-09:00"), "is empty: it starts when it ends"),
    (("--not-before", "tonight"), "'tonight' is not an ISO 8601 time or HH:MM"),
    (("--max-cost", "-1"), "--max-cost must be a positive amount of USD"),
    (("--max-tokens", "0"), "--max-tokens must be a positive number"),
    (("--webhook", "http://127.0.0.1:9/hook"), "set PROMPTQ_WEBHOOK_SECRET"),
    (("--priority", "urgent"), "--priority must be interactive or bulk"),
]


@pytest.mark.parametrize(("options", "says"), BAD_OPTIONS, ids=[o[0][0] for o in BAD_OPTIONS])
def test_a_bad_batch_option_is_refused_by_name_and_creates_nothing(
    options: tuple[str, ...], says: str, tmp_path: Path, redis_url: str, redis_server: RedisServer
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(good("a", "b"))
    data_dir = tmp_path / "data"
    env = {"PROMPTQ_DATA_DIR": str(data_dir), "PROMPTQ_REDIS_URL": redis_url}
    done = promptq("submit", str(path), *options, env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert says in " ".join(done.stderr.split()), done.stderr  # rich may wrap a usage error
    assert "Traceback" not in done.stderr
    assert not done.stdout.strip()
    assert not data_dir.exists()
    assert redis_server.client().dbsize() == 0


def test_a_webhook_that_is_not_an_http_url_is_refused_by_name(
    tmp_path: Path, redis_url: str
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(good("a"))
    env = {
        "PROMPTQ_DATA_DIR": str(tmp_path / "data"),
        "PROMPTQ_REDIS_URL": redis_url,
        "PROMPTQ_WEBHOOK_SECRET": "s3cret-for-tests",
    }
    done = promptq("submit", str(path), "--webhook", "ftp://example.com/hook", env=env)
    assert done.returncode == 2, done.stderr
    assert "--webhook" in done.stderr and "ftp://example.com/hook" in done.stderr
    assert not (tmp_path / "data").exists()
