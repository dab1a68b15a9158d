"""One server per data dir and per port; the embedded store reachable only by its server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import packetbus
from packetbus_server import Durability, ServerConfig, start
from packetbus_server._embedded import DataDirInUseError, socket_path
from tests.conftest import (
    REPO,
    free_port,
    new_packet,
    packetbus_serve,
    run_cli,
    unique,
    wait_for_workers,
    worker_pids,
)


def _serve(*argv: str) -> subprocess.Popen[str]:
    """`packetbus serve ARGV` once it serves: with --workers, once every worker does
    (the supervisor's own line comes as they are launched, before they listen)."""
    process = packetbus_serve(*argv)
    if "--workers" in argv:
        wait_for_workers(process, int(argv[argv.index("--workers") + 1]))
    return process


def _refused(*argv: str) -> str:
    """`packetbus serve ARGV`, which must fail at once: its one line of stderr."""
    done = run_cli("serve", *argv, timeout=30)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


async def _dispatch(port: int, topic: str) -> str:
    async with await packetbus.Client.connect(f"127.0.0.1:{port}", timeout=10) as client:
        packet = new_packet(topic)
        await client.dispatch(packet)
        return packet.tracking_id


async def _get(port: int, tracking_id: str) -> str:
    async with await packetbus.Client.connect(f"127.0.0.1:{port}", timeout=10) as client:
        return (await client.get_packet(tracking_id)).packet.tracking_id


@pytest.mark.slow
async def test_a_second_serve_on_a_data_dir_in_use_fails_and_leaves_the_first_alone(
    tmp_path: Path,
) -> None:
    data, first_port = tmp_path / "data", free_port()
    first = await asyncio.to_thread(
        _serve, "--listen", f"127.0.0.1:{first_port}", "--data-dir", str(data)
    )
    try:
        valkey = int((data / "valkey.pid").read_text())
        tracking_id = await _dispatch(first_port, unique("own"))
        line = await asyncio.to_thread(
            _refused, "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(data)
        )
        assert f"is in use by another packetbus server (pid {first.pid})" in line
        # The first server's store was not touched: same process, same data, serving.
        assert int((data / "valkey.pid").read_text()) == valkey
        assert await _get(first_port, tracking_id) == tracking_id
        # So with --workers: the supervisor holds the lock the same way.
        line = await asyncio.to_thread(
            _refused,
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--data-dir",
            str(data),
            "--workers",
            "2",
        )
        assert "is in use by another packetbus server" in line
        assert await _get(first_port, tracking_id) == tracking_id
    finally:
        await asyncio.to_thread(_stop, first)


@pytest.mark.slow
async def test_a_killed_servers_lock_does_not_block_and_its_store_is_stopped(
    tmp_path: Path,
) -> None:
    data, port = tmp_path / "data", free_port()
    first = await asyncio.to_thread(
        _serve, "--listen", f"127.0.0.1:{port}", "--data-dir", str(data)
    )
    tracking_id = await _dispatch(port, unique("own"))
    orphan = int((data / "valkey.pid").read_text())
    first.kill()  # SIGKILL: no cleanup; the kernel drops the lock, the Valkey lives on
    await asyncio.to_thread(first.wait)
    assert await asyncio.to_thread(Path(f"/proc/{orphan}").exists)
    second = await asyncio.to_thread(
        _serve, "--listen", f"127.0.0.1:{port}", "--data-dir", str(data)
    )
    try:
        assert not await asyncio.to_thread(Path(f"/proc/{orphan}").exists)  # stopped first
        assert int((data / "valkey.pid").read_text()) != orphan
        assert await _get(port, tracking_id) == tracking_id
    finally:
        await asyncio.to_thread(_stop, second)


def _gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(Path(f"/proc/{pid}").exists() for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.slow
async def test_the_workers_of_a_killed_supervisor_stop_and_leave_the_data_dir(
    tmp_path: Path,
) -> None:
    """A supervisor SIGKILLed (the OOM killer, kill -9) takes its lock with it; its
    workers must not outlive it, still serving on the port from the store a next
    server on the data dir stops and starts again (two servers on one home)."""
    data, port = tmp_path / "data", free_port()
    argv = ("--listen", f"127.0.0.1:{port}", "--data-dir", str(data), "--workers", "2")
    first = await asyncio.to_thread(_serve, *argv, "--drain-notice", "0", "--grace", "1")
    tracking_id = await _dispatch(port, unique("own"))
    workers = await asyncio.to_thread(worker_pids, first.pid)
    assert len(workers) == 2
    first.kill()
    await asyncio.to_thread(first.wait)
    # Each worker drains (notice 0 s, grace 1 s) and exits on its own.
    try:
        assert await asyncio.to_thread(_gone, workers, 15.0), "workers outlived their supervisor"
    finally:
        for pid in workers:  # what a failure leaves behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    second = await asyncio.to_thread(_serve, *argv)
    try:
        assert await _get(port, tracking_id) == tracking_id
    finally:
        await asyncio.to_thread(_stop, second)


async def test_two_servers_in_one_process_cannot_share_a_data_dir(tmp_path: Path) -> None:
    # flock conflicts between two holders in one process too.
    config = ServerConfig(listen="127.0.0.1:0", data_dir=tmp_path / "data")
    first = await start(config)
    try:
        with pytest.raises(DataDirInUseError, match="is in use by another packetbus server"):
            await start(config)
    finally:
        await first.stop(grace=0, notice=0)
    second = await start(config)  # released by the first's stop
    await second.stop(grace=0, notice=0)


@pytest.mark.slow
async def test_a_second_serve_on_a_port_in_use_fails(tmp_path: Path, redis_url: str) -> None:
    # Even over one shared store: two servers on one port would split the clients
    # between them at random (only --workers share a port).
    port = free_port()
    first = await asyncio.to_thread(
        _serve,
        "--listen",
        f"127.0.0.1:{port}",
        "--redis-url",
        redis_url,
        "--data-dir",
        str(tmp_path),
    )
    try:
        line = await asyncio.to_thread(
            _refused,
            "--listen",
            f"127.0.0.1:{port}",
            "--redis-url",
            redis_url,
            "--data-dir",
            str(tmp_path),
        )
        assert "only the workers of one server (--workers) share a port" in line
        # The server binds without SO_REUSEPORT, so a start that skips the CLI's
        # check fails too.
        with pytest.raises(OSError, match="cannot listen on"):
            await start(
                ServerConfig(listen=f"127.0.0.1:{port}", redis_url=redis_url, data_dir=tmp_path)
            )
        assert await _dispatch(port, unique("own"))
    finally:
        await asyncio.to_thread(_stop, first)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A data dir every user may enter (as ~/.local/share often is), so only the
    store's own socket directory keeps other users out."""
    base = Path(tempfile.mkdtemp(prefix="pb-own-", dir="/tmp"))
    base.chmod(0o755)
    data = base / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    yield data
    shutil.rmtree(base, ignore_errors=True)


def _tcp_listeners(pid: int) -> list[str]:
    """The TCP sockets process `pid` listens on (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.append(fields[1])
    return found


async def test_the_embedded_store_is_reachable_by_its_server_only(open_dir: Path) -> None:
    srv = await start(ServerConfig(listen="127.0.0.1:0", data_dir=open_dir))
    try:
        valkey = int((open_dir / "valkey.pid").read_text())
        assert _tcp_listeners(valkey) == []  # nothing to reach over TCP
        sock = socket_path(open_dir)
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        assert sock.parent.stat().st_uid == os.getuid()
        assert stat.S_IMODE((open_dir / "appendonly").stat().st_mode) == 0o700  # the packets
        # Another user of the machine cannot connect to the socket.
        probe = (
            "import socket,sys\n"
            "s=socket.socket(socket.AF_UNIX)\n"
            "try:\n"
            f"    s.connect({str(sock)!r}); s.sendall(b'PING\\r\\n'); print(s.recv(64))\n"
            "except OSError as e:\n"
            "    print(type(e).__name__)\n"
        )
        if os.geteuid() == 0:  # root passes any permission: probe as nobody
            # The system's Python: nobody may not enter this one's home.
            python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
            done = await asyncio.to_thread(
                lambda: subprocess.run(
                    [python, "-c", probe],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=False,
                    user=65534,
                    group=65534,
                    extra_groups=[],
                )
            )
            assert done.stdout.strip() == "PermissionError", done.stdout + done.stderr
        # The server itself reaches it.
        assert await _dispatch(srv.port, unique("own"))
    finally:
        await srv.stop(grace=0, notice=0)


async def test_a_data_dir_too_deep_for_a_socket_path_still_works(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["d" * 40] * 3)
    sock = socket_path(deep.resolve())
    assert len(str(sock)) <= 100
    assert not sock.is_relative_to(deep)
    srv = await start(ServerConfig(listen="127.0.0.1:0", data_dir=deep))
    try:
        assert await _dispatch(srv.port, unique("own"))
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    finally:
        await srv.stop(grace=0, notice=0)


async def test_the_embedded_store_is_started_again_when_it_dies(tmp_path: Path) -> None:
    """The store's process killed under a running server (the OOM killer, a crash):
    the server owns it, so it starts it again from its data dir, and nothing
    acknowledged before is lost; it was NOT_SERVING for good."""
    data = tmp_path / "data"
    # Durability "always": with everysec, a write may wait up to 2 s in the store's
    # memory while a slow fsync runs (README "Durability"), and a SIGKILL loses it.
    srv = await start(
        ServerConfig(
            listen="127.0.0.1:0",
            data_dir=data,
            health_interval_seconds=0.2,
            durability=Durability.ALWAYS,
        )
    )
    try:
        tracking_id = await _dispatch(srv.port, unique("own"))
        first = int((data / "valkey.pid").read_text())
        os.kill(first, signal.SIGKILL)
        async with await packetbus.Client.connect(f"127.0.0.1:{srv.port}", timeout=5) as client:
            deadline = asyncio.get_running_loop().time() + 45  # ~1 s unloaded (see below)
            while await client.health() != "SERVING" or not await asyncio.to_thread(
                _restarted, data, first
            ):
                assert asyncio.get_running_loop().time() < deadline, "the store stayed down"
                await asyncio.sleep(0.2)
        assert await _get(srv.port, tracking_id) == tracking_id
        await _dispatch(srv.port, unique("own"))
    finally:
        await srv.stop(grace=0, notice=0)


def _restarted(data: Path, first: int) -> bool:
    try:
        return int((data / "valkey.pid").read_text()) != first
    except (OSError, ValueError):
        return False


@pytest.mark.slow
async def test_the_supervisor_of_workers_starts_the_embedded_store_again(tmp_path: Path) -> None:
    data, port = tmp_path / "data", free_port()
    served = await asyncio.to_thread(
        _serve,
        "--listen",
        f"127.0.0.1:{port}",
        "--data-dir",
        str(data),
        "--workers",
        "2",
        "--durability",  # as in the test above
        "always",
    )
    try:
        tracking_id = await _dispatch(port, unique("own"))
        first = int((data / "valkey.pid").read_text())
        os.kill(first, signal.SIGKILL)
        # The supervisor restarts it about 1 s later (_embedded._RESTART_AFTER); the
        # rest is room for a loaded machine (parallel test workers), not the rule.
        deadline = time.monotonic() + 45
        while not await asyncio.to_thread(_restarted, data, first):
            if time.monotonic() >= deadline:
                # Seen once in a loaded run, with no log to tell why: say what the
                # supervisor and its workers logged.
                await asyncio.to_thread(_stop, served)
                assert served.stdout is not None
                log = served.stdout.read()
                raise AssertionError(f"the store stayed down; serve said:\n{log[-4000:]}")
            await asyncio.sleep(0.2)
        assert await _get(port, tracking_id) == tracking_id  # each worker reconnects
        assert await _get(port, tracking_id) == tracking_id
    finally:
        await asyncio.to_thread(_stop, served)


def test_ctrl_c_reaches_the_server_only_which_stops_its_store_itself(tmp_path: Path) -> None:
    """Ctrl-C in a terminal signals the whole foreground process group: the
    embedded store must not be in it, or it shuts down under the draining server
    (which then logged it as crashed and started it again)."""
    data = tmp_path / "data"
    argv = ["--listen", "127.0.0.1:0", "--data-dir", str(data), "--drain-notice", "2"]
    process = subprocess.Popen(
        [sys.executable, "-m", "packetbus._cli", "serve", *argv, "--grace", "1"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own group, as a shell gives a foreground job
    )
    assert process.stdout is not None
    try:
        for line in process.stdout:
            if "serving on" in line:
                break
        store = int((data / "valkey.pid").read_text())
        assert os.getpgid(store) != os.getpgid(process.pid)
        os.killpg(process.pid, signal.SIGINT)
        rest = process.stdout.read()
        assert process.wait(30) == 0, rest
        assert "exited" not in rest, rest
        assert "ERROR" not in rest, rest
        assert _gone([store], timeout=10)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
