"""Real Redis and PostgreSQL servers for the test suite, with the faults crash tests inject.

Both fail loudly: a server that cannot start raises `ServiceStartError` with the tail
of its log, never a skip, so a broken machine shows up as a red test run.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import redis
from psycopg import sql

from jobs.embedded import find_redis_server

_POLL_INTERVAL_S = 0.02
_LOG_TAIL_LINES = 30
_PORT_TRIES = 3
# Used when the suite runs as root, which initdb and postgres refuse.
_FALLBACK_PG_USER = "promptq-pg"
PG_SUPERUSER = "postgres"
_REDIS_CONF = """\
bind 127.0.0.1
port {port}
dir "{dir}"
logfile ""
appendonly yes
# Every write reaches the disk before it is acknowledged: SIGKILL loses nothing.
appendfsync always
maxmemory-policy noeviction
save ""
"""
_PG_TEST_SETTINGS = """
# promptq test server. TCP only: a socket path under a deep tmp dir can exceed 107 bytes.
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 200
# Tests only: durability traded for speed (restart() is a clean stop).
fsync = off
synchronous_commit = off
full_page_writes = off
"""


class ServiceStartError(RuntimeError):
    """A test server could not be started; the message carries its log."""


class RedisServer:
    """A redis-server on a loopback TCP port, durable enough that SIGKILL loses nothing."""

    def __init__(self, tmp_dir: Path) -> None:
        self.dir = Path(tmp_dir).absolute()
        self.conf_path = self.dir / "redis.conf"
        self.log_path = self.dir / "redis.log"
        self.port = 0  # chosen at the first start, kept across restarts
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("RedisServer has no port before its first start()")
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def returncode(self) -> int | None:
        """The last process's exit status (negative: killed by that signal); None if running."""
        return None if self.process is None else self.process.poll()

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis.from_url(self.url, **kwargs)  # type: ignore[arg-type]

    def is_running(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            return False
        try:
            with self.client(socket_connect_timeout=1, socket_timeout=1) as client:
                # Whoever answers on the port must be our process, not a squatter.
                return int(client.info("server")["process_id"]) == self.process.pid
        except (redis.RedisError, OSError):
            return False

    def start(self, timeout_s: float = 10) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.port:
            self._launch(self.port, timeout_s)
            return
        for attempt in range(1, _PORT_TRIES + 1):
            try:
                self._launch(free_tcp_port(), timeout_s)
                return
            except ServiceStartError as error:
                # Another process may grab a free port before redis-server binds it.
                if "Address already in use" not in str(error) or attempt == _PORT_TRIES:
                    raise

    def stop(self, timeout_s: float = 10) -> None:
        """SIGTERM (Redis flushes the AOF and exits), SIGKILL if it takes too long."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL, as a crashed or OOM-killed Redis: no shutdown hook runs."""
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError("RedisServer.kill(): the server is not running")
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def restart(self, timeout_s: float = 10) -> None:
        """Stop if running, then start on the same port from the same AOF."""
        self.stop()
        self.start(timeout_s)

    def wipe_and_restart(self, timeout_s: float = 10) -> None:
        """Kill, delete every persisted byte, start empty on the same port: Redis lost."""
        if self.returncode is None and self.process is not None:
            self.kill()
        shutil.rmtree(self.dir / "appendonlydir", ignore_errors=True)
        for pattern in ("*.aof", "*.rdb"):
            for path in self.dir.glob(pattern):
                path.unlink()
        self.start(timeout_s)

    def _launch(self, port: int, timeout_s: float) -> None:
        if self.is_running():
            raise RuntimeError(f"RedisServer on port {self.port} is already running")
        self.port = port
        self.conf_path.write_text(_REDIS_CONF.format(port=port, dir=self.dir))
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [find_redis_server(), str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                # its own session: a Ctrl-C aimed at pytest must not kill it mid-test
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while not self.is_running():
            if self.process.poll() is not None or time.monotonic() >= deadline:
                if self.process.poll() is None:
                    self.process.kill()
                    self.process.wait()
                raise ServiceStartError(
                    f"redis-server on port {port} did not start (exit {self.process.returncode});"
                    f" {self.log_path}:\n{log_tail(self.log_path, log_offset)}"
                )
            time.sleep(_POLL_INTERVAL_S)


class PostgresServer:
    """A throwaway PostgreSQL cluster on a loopback TCP port, trust auth, no fsync.

    As root (initdb and postgres refuse root) the cluster runs as the `postgres` user,
    or as a system user created for the purpose, in a directory of its own under the
    system temp dir, since pytest's tmp dirs are private to root; `stop()` removes it.
    """

    def __init__(self, tmp_dir: Path) -> None:
        self.tmp_dir = Path(tmp_dir).absolute()
        self.port = 0
        self.base_dir: Path | None = None
        self._user: pwd.struct_passwd | None = None
        self._bin_dir: Path | None = None

    @property
    def data_dir(self) -> Path:
        return self._base() / "data"

    @property
    def log_path(self) -> Path:
        return self._base() / "postgres.log"

    def url(self, dbname: str) -> str:
        """The SQLAlchemy URL of a database on this server."""
        return f"postgresql+psycopg://{PG_SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection:
        conninfo = f"host=127.0.0.1 port={self.port} user={PG_SUPERUSER} dbname={dbname}"
        return psycopg.connect(conninfo, autocommit=True, connect_timeout=5)

    def is_running(self) -> bool:
        if not self.port:
            return False
        try:
            with self.connect() as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def start(self, timeout_s: float = 30) -> None:
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
            if self.port:
                self._write_port(self.port)
        if self.port:
            self._pg_ctl_start(timeout_s)
            return
        for attempt in range(1, _PORT_TRIES + 1):
            self.port = free_tcp_port()
            self._write_port(self.port)
            try:
                self._pg_ctl_start(timeout_s)
                return
            except ServiceStartError as error:
                if "could not bind" not in str(error) or attempt == _PORT_TRIES:
                    raise

    def restart(self, timeout_s: float = 30, down_s: float = 0) -> None:
        """Fast stop (as an admin's restart: sessions cut), stay down `down_s` (a failover
        takes a while), then start on the same data."""
        self._stop("fast", timeout_s)
        time.sleep(down_s)
        self._pg_ctl_start(timeout_s)

    def stop(self) -> None:
        """Stop the server for good; a cluster outside tmp_dir is removed with it."""
        if self.base_dir is None:
            return
        self._stop("immediate", 30)
        if not self.base_dir.is_relative_to(self.tmp_dir):
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None

    def create_database(self, name: str) -> str:
        """A new, empty database (an existing one of that name is dropped); its URL."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"database name {name!r}: use lowercase letters, digits and _")
        with self.connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    # -- cluster lifecycle -----------------------------------------------------------

    def _base(self) -> Path:
        if self.base_dir is None:
            user = self._run_as()
            if user is None:
                self.base_dir = self.tmp_dir / "postgres"
                self.base_dir.mkdir(parents=True, exist_ok=True)
            else:
                self.base_dir = Path(tempfile.mkdtemp(prefix="promptq-pg-"))
                os.chown(self.base_dir, user.pw_uid, user.pw_gid)
        return self.base_dir

    def _initdb(self) -> None:
        # --no-sync: a test cluster needs no crash safety, and fsyncing it costs seconds.
        options = ["--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"]
        self._run("initdb", "-D", str(self.data_dir), "-U", PG_SUPERUSER, *options)
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(_PG_TEST_SETTINGS)

    def _write_port(self, port: int) -> None:
        # postgresql.auto.conf is read last, so the latest port wins on every start.
        (self.data_dir / "postgresql.auto.conf").write_text(f"port = {port}\n")
        user = self._run_as()
        if user is not None:
            os.chown(self.data_dir / "postgresql.auto.conf", user.pw_uid, user.pw_gid)

    def _pg_ctl_start(self, timeout_s: float) -> None:
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        try:
            self._pg_ctl("start", "-w", "-t", str(int(timeout_s)), "-l", str(self.log_path))
        except ServiceStartError as error:
            raise ServiceStartError(
                f"{error}\n{self.log_path}:\n{log_tail(self.log_path, log_offset)}"
            ) from None

    def _stop(self, mode: str, timeout_s: float) -> None:
        try:
            self._pg_ctl("stop", "-m", mode, "-w", "-t", str(int(timeout_s)))
        except ServiceStartError:
            if self.is_running():  # else it was down already (killed, or never started)
                raise

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), *args)

    def _run(self, program: str, *args: str) -> None:
        user = self._run_as()
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env |= {"LC_ALL": "C", "LANG": "C"}
        if user is not None:
            env["HOME"] = str(self._base())
        result = subprocess.run(
            [str(self._bin() / program), *args],
            cwd=self._base(),
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            user=None if user is None else user.pw_uid,
            group=None if user is None else user.pw_gid,
            extra_groups=None if user is None else [],
        )
        if result.returncode != 0:
            raise ServiceStartError(
                f"{program} {' '.join(args)} failed (exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )

    def _run_as(self) -> pwd.struct_passwd | None:
        """The unprivileged user to run PostgreSQL as, or None to run as ourselves."""
        if os.geteuid() != 0:
            return None
        if self._user is None:
            self._user = _unprivileged_user()
        return self._user

    def _bin(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = find_postgres_bin_dir()
        return self._bin_dir


def find_postgres_bin_dir() -> Path:
    """The directory of initdb and pg_ctl: Debian's highest version, else PATH."""

    def version(bin_dir: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", bin_dir.parent.name))

    debian = [
        path.parent
        for path in Path("/usr/lib/postgresql").glob("*/bin/initdb")
        if (path.parent / "pg_ctl").exists()
    ]
    if debian:
        return max(debian, key=version)
    initdb = shutil.which("initdb")
    if initdb and (Path(initdb).parent / "pg_ctl").exists():
        return Path(initdb).parent
    raise ServiceStartError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin "
        "or on PATH: run scripts/test, or `apt-get install -y postgresql`"
    )


def _unprivileged_user() -> pwd.struct_passwd:
    for name in ("postgres", _FALLBACK_PG_USER):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    result = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
         _FALLBACK_PG_USER],
        capture_output=True,
        text=True,
    )  # fmt: skip
    try:
        return pwd.getpwnam(_FALLBACK_PG_USER)
    except KeyError:
        raise ServiceStartError(
            f"running as root, and could not create the user {_FALLBACK_PG_USER} for PostgreSQL "
            f"(useradd exit {result.returncode}): {result.stderr}"
        ) from None


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def log_tail(path: Path, offset: int = 0) -> str:
    """The last lines written to a log since offset."""
    try:
        with open(path, "rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError as error:
        return f"(no log: {error})"
    lines = text.strip().splitlines()[-_LOG_TAIL_LINES:]
    return "\n".join(lines) if lines else "(nothing logged)"
