"""The bad-input catalogue over the HTTP API: each bad file uploaded with the `openai` SDK
ends its batch `failed`, with an `errors.data` entry naming the line and the fault, and
nothing is stored or sent upstream."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.simulator import SimulatorProcess
from tests.apiserver import ApiServer
from tests.bad_inputs import CATALOGUE, Bad
from tests.services import RedisServer

UPLOAD_LIMIT_BYTES = 64 * 1024 * 1024  # the catalogue holds an 8 MiB line and a 13 MB file


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[ApiServer]:
    if not redis_server.is_running():
        redis_server.restart()
    redis = redis_server.url.rsplit("/", 1)[0] + "/2"  # a Redis database of its own
    tmp = tmp_path_factory.mktemp("api-bad")
    with SimulatorProcess() as sim:
        env = {
            "PROMPTQ_UPSTREAM_BASE_URL": sim.base_url,
            "COMETAPI_API_KEY": "sk-unused",
            "PROMPTQ_DATA_DIR": str(tmp / "data"),
            "PROMPTQ_REDIS_URL": redis,
            "PROMPTQ_DATABASE_URL": f"sqlite:///{tmp / 'data' / 'promptq.db'}",
            "PROMPTQ_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT_BYTES),
        }
        api = ApiServer(env, tmp / "logs")
        api.simulator = sim
        try:
            yield api.start(workers=1)
        finally:
            api.stop()


@pytest.mark.parametrize("bad", CATALOGUE, ids=[bad.name for bad in CATALOGUE])
def test_a_bad_file_ends_its_batch_failed_naming_the_line_and_nothing_runs(
    server: ApiServer, bad: Bad
) -> None:
    client = server.client(server.key(f"bad-{bad.name}"))
    uploaded = client.files.create(file=(f"{bad.name}.jsonl", bad.content()), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/responses", completion_window="24h"
    )
    assert batch.status == "failed"
    assert batch.errors is not None and batch.errors.data
    found = [(e.line or 0, e.message or "") for e in batch.errors.data]
    assert any(line == bad.line and bad.says in message for line, message in found), found
    assert batch.request_counts is not None and batch.request_counts.total == 0
    database = Path(server.env["PROMPTQ_DATABASE_URL"].removeprefix("sqlite:///"))
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT count(*) FROM requests").fetchone() == (0,)
    assert server.simulator.stats()["requests_total"] == 0
