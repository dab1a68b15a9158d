"""`packetbus serve --workers N`: several processes on one port, drained together."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import packetbus
from tests.conftest import REPO, free_port, new_packet, unique

pytestmark = pytest.mark.slow


async def test_two_workers_share_a_port_and_drain_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    server = await asyncio.to_thread(
        subprocess.Popen,
        [
            sys.executable,
            "-m",
            "packetbus._cli",
            "serve",
            "--workers",
            "2",
            "--listen",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(data),
            "--grace",
            "2",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert server.stdout is not None
    try:
        ready = 0
        async with asyncio.timeout(60):
            while ready < 2:
                line = await asyncio.to_thread(server.stdout.readline)
                assert line, f"server exited with {server.poll()}"
                ready += "serving on" in line
        valkey_pid = int((data / "valkey.pid").read_text())
        topic = unique("w")
        config = packetbus.ClientConfig(connections=4)
        async with await packetbus.Client.connect(f"127.0.0.1:{port}", config=config) as client:
            packets = [new_packet(topic) for _ in range(400)]
            for start in range(0, 400, 50):
                results = await client.dispatch_batch(packets[start : start + 50])
                assert all(r.WhichOneof("outcome") == "receipt" for r in results)
            # Every worker signs with the same keys, as one server.
            verdicts = [await client.verify_custody(p.tracking_id) for p in packets[::50]]
            assert all(v.verified for v in verdicts)
            assert len({e.actor for v in verdicts for e in v.entries}) == 1
    finally:
        server.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(server.wait, 60)
    assert code == 0
    assert not await asyncio.to_thread(Path(f"/proc/{valkey_pid}").exists)


def test_workers_need_a_fixed_port(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "packetbus._cli",
            "serve",
            "--workers",
            "2",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "fixed port" in done.stderr
