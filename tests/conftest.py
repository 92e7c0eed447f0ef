"""Fixtures shared by the whole suite: real services, started once per session.

Servers are session-scoped because starting them costs time; the function-scoped
fixtures built on them hand each test a clean state. Add new fixtures in their own
section below, following the same pattern.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from jobs.migrate import upgrade
from jobs.simulator import SimulatorProcess
from tests.apiserver import UPLOAD_LIMIT_BYTES, ApiServer
from tests.deploy import apply_env, reset_caches
from tests.services import PostgresServer, RedisServer

# -- Redis -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session; crash tests may kill or wipe it."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, running and empty."""
    # A crash test before this one may have left it killed.
    if not redis_server.is_running():
        redis_server.restart()
    with redis_server.client() as client:
        client.flushall()
    return redis_server.url


# -- PostgreSQL --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One real PostgreSQL cluster for the session; `create_database` gives each test its own."""
    server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    server.start()
    yield server
    server.stop()


# -- promptq: databases, settings, the simulator -------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind: the test runs once on SQLite, once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'promptq.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def db(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This process's promptq pointed at a migrated, empty database."""
    apply_env(
        monkeypatch,
        {"PROMPTQ_DATABASE_URL": database_url, "PROMPTQ_DATA_DIR": str(tmp_path / "data")},
    )
    upgrade(database_url)
    yield database_url
    reset_caches()


@pytest.fixture
def simulator() -> Iterator[SimulatorProcess]:
    """The OpenAI-compatible simulator as its own process, requiring a key like a real upstream."""
    key = "sk-test-" + secrets.token_hex(12)
    with SimulatorProcess(require_key=key) as sim:
        sim.key = key  # type: ignore[attr-defined]
        yield sim


# -- the HTTP API: `promptq api` and `promptq worker` as real processes -----------------------


def _api_env(simulator: SimulatorProcess, data_dir: Path, redis: str) -> dict[str, str]:
    return {
        "PROMPTQ_UPSTREAM_BASE_URL": simulator.base_url,
        "COMETAPI_API_KEY": simulator.key,  # type: ignore[attr-defined]
        "PROMPTQ_DATA_DIR": str(data_dir),
        "PROMPTQ_REDIS_URL": redis,
        "PROMPTQ_SWEEP_INTERVAL_S": "0.5",
        "PROMPTQ_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT_BYTES),
        # one request per message: a cancel finds most of a batch still queued
        "PROMPTQ_IDS_PER_MESSAGE": "1",
    }


@pytest.fixture(scope="module")
def api_simulator() -> Iterator[SimulatorProcess]:
    """The simulator for a module's API deployments, requiring a key like a real upstream."""
    key = "sk-test-" + secrets.token_hex(12)
    with SimulatorProcess(require_key=key) as sim:
        sim.key = key  # type: ignore[attr-defined]
        yield sim


@pytest.fixture(scope="module")
def api_server(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    api_simulator: SimulatorProcess,
) -> Iterator[ApiServer]:
    """`promptq api` and two `promptq worker` processes on SQLite, for a whole module.

    Starting them costs seconds, so tests share them: each test makes keys of its own, and
    owners keep the tests apart. Uploads are limited to UPLOAD_LIMIT_BYTES.
    """
    if not redis_server.is_running():
        redis_server.restart()
    with redis_server.client() as client:
        client.flushall()
    tmp = tmp_path_factory.mktemp("api")
    env = _api_env(api_simulator, tmp / "data", redis_server.url)
    env["PROMPTQ_DATABASE_URL"] = f"sqlite:///{tmp / 'data' / 'promptq.db'}"
    server = ApiServer(env, tmp / "logs")
    server.simulator = api_simulator
    try:
        yield server.start(workers=2)
    finally:
        server.stop()


@pytest.fixture
def postgres_api_server(
    tmp_path: Path,
    redis_server: RedisServer,
    postgres_server: PostgresServer,
    api_simulator: SimulatorProcess,
) -> Iterator[ApiServer]:
    """The same deployment on a PostgreSQL database of its own, with one worker.

    Its Redis database is another one (1): beside `api_server`, two deployments on one
    queue would take each other's messages.
    """
    if not redis_server.is_running():
        redis_server.restart()
    redis = redis_server.url.rsplit("/", 1)[0] + "/1"
    with Redis.from_url(redis) as client:
        client.flushdb()
    env = _api_env(api_simulator, tmp_path / "data", redis)
    env["PROMPTQ_DATABASE_URL"] = postgres_server.create_database(f"api_{uuid.uuid4().hex[:12]}")
    server = ApiServer(env, tmp_path / "logs")
    server.simulator = api_simulator
    try:
        yield server.start(workers=1)
    finally:
        server.stop()
