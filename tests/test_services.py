"""The test servers behave as the crash tests assume: real, durable, and really killable."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy

from tests.services import PostgresServer, RedisServer, ServiceStartError

# -- Redis -------------------------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private server, for tests that would otherwise disturb the session's one."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def test_redis_url_gives_each_test_a_running_empty_server(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}


def test_redis_kill_is_a_real_sigkill(own_redis: RedisServer) -> None:
    assert own_redis.process is not None
    pid = own_redis.process.pid
    own_redis.kill()
    assert own_redis.returncode == -signal.SIGKILL
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not own_redis.is_running()


def test_redis_restart_after_kill_keeps_acknowledged_writes(own_redis: RedisServer) -> None:
    with own_redis.client() as client:
        client.set("acknowledged", "yes")
        client.rpush("queue", *range(100))
    port = own_redis.port
    own_redis.kill()
    own_redis.restart()
    assert own_redis.port == port
    with own_redis.client() as client:
        assert client.get("acknowledged") == b"yes"
        assert client.llen("queue") == 100


def test_redis_wipe_and_restart_loses_everything(own_redis: RedisServer) -> None:
    with own_redis.client() as client:
        client.set("doomed", 1)
    port = own_redis.port
    own_redis.wipe_and_restart()
    assert own_redis.port == port
    with own_redis.client() as client:
        assert client.dbsize() == 0


def test_redis_that_cannot_bind_raises_with_its_log(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    squatter = RedisServer(tmp_path)
    squatter.port = redis_server.port  # taken by the session's server
    with pytest.raises(ServiceStartError, match="(?s)did not start.*Address already in use"):
        squatter.start()


# -- PostgreSQL --------------------------------------------------------------------------


def _engine(url: str) -> sqlalchemy.Engine:
    return sqlalchemy.create_engine(url, poolclass=sqlalchemy.NullPool)


def test_postgres_creates_databases_reachable_by_their_sqlalchemy_url(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.create_database("services_connect")
    assert url == f"postgresql+psycopg://postgres@127.0.0.1:{postgres_server.port}/services_connect"
    engine = _engine(url)
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT current_database()")).scalar() == (
            "services_connect"
        )
        assert conn.execute(sqlalchemy.text("SHOW max_connections")).scalar() == "200"
        assert conn.execute(sqlalchemy.text("SHOW fsync")).scalar() == "off"
    engine.dispose()


def test_postgres_create_database_starts_empty_each_time(postgres_server: PostgresServer) -> None:
    engine = _engine(postgres_server.create_database("services_fresh"))
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE leftover (x int)"))
    engine.dispose()
    engine = _engine(postgres_server.create_database("services_fresh"))
    with engine.connect() as conn:
        assert sqlalchemy.inspect(conn).get_table_names() == []
    engine.dispose()


def test_postgres_restart_keeps_committed_data(postgres_server: PostgresServer) -> None:
    engine = _engine(postgres_server.create_database("services_restart"))
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE kept (x int)"))
        conn.execute(sqlalchemy.text("INSERT INTO kept VALUES (1), (2)"))
    postgres_server.restart()
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT sum(x) FROM kept")).scalar() == 3
    engine.dispose()


def test_postgres_runs_as_an_unprivileged_user(postgres_server: PostgresServer) -> None:
    pid_line = (postgres_server.data_dir / "postmaster.pid").read_text().splitlines()[0]
    assert os.stat(f"/proc/{pid_line}").st_uid != 0


def test_postgres_stop_removes_a_cluster_kept_outside_tmp_dir(tmp_path: Path) -> None:
    server = PostgresServer(tmp_path)
    server.start()
    base_dir = server.base_dir
    assert base_dir is not None and server.is_running()
    server.stop()
    assert not server.is_running()
    assert base_dir.is_relative_to(tmp_path) or not base_dir.exists()
