"""Database engines and sessions: SQLite (embedded default) and PostgreSQL alike."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, create_engine

from jobs.settings import get_settings

SQLITE_BUSY_TIMEOUT_MS = 30_000
READ_ONLY = "promptq_read_only"  # an execution option: see read_scope


def _configure_sqlite(engine: Engine) -> None:
    """WAL, a busy timeout, and BEGIN IMMEDIATE for every transaction.

    pysqlite's deferred BEGIN takes the write lock only at the first write, so a
    transaction that reads then writes fails with SQLITE_BUSY whatever the timeout.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # a reader in WAL mode never blocks the writers: it needs no lock at all
        read_only = conn.get_execution_options().get(READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


_engines: dict[str, Engine] = {}


def get_engine(url: str | None = None) -> Engine:
    """The engine for `url` (default: the settings' database), built once per process."""
    url = url or get_settings().resolved_database_url
    if url not in _engines:
        _engines[url] = _build_engine(url)
    return _engines[url]


def _build_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error."""
    with Session(get_engine(url), expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


@contextmanager
def read_scope(url: str | None = None) -> Iterator[Session]:
    """A session that only reads (scrapes, progress, reports): on SQLite it takes no write
    lock, so a long read never stalls the workers' writes; it never commits."""
    engine = get_engine(url).execution_options(**{READ_ONLY: True})
    # closing ends the transaction and keeps what was read (a rollback would expire it)
    with Session(engine, expire_on_commit=False) as session:
        yield session


def reset_engines() -> None:
    """Forget cached engines (after a fork, or between tests)."""
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()
