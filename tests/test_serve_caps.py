"""`packetbus serve`'s stream-cap flags (and their env vars) reach the server: a tiny
cap set by flag is enforced, and a bad value is a one-line usage error."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from packetbus.v1 import task_service_pb2 as task_pb2
from packetbus.v1 import task_service_pb2_grpc as task_pb2_grpc
from tests._polling import until
from tests.conftest import free_port, unique

SERVE = [sys.executable, "-m", "packetbus._cli", "serve"]


def _serve(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [*SERVE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert process.stdout is not None
    for line in process.stdout:
        if "serving on" in line:
            return process
    raise AssertionError(f"server exited with {process.wait()}")


@pytest.mark.parametrize("how", ["flag", "env"])
async def test_a_watcher_cap_set_on_serve_is_enforced(
    redis_url: str, tmp_path: Path, how: str
) -> None:
    port = free_port()
    common = ["--listen", f"127.0.0.1:{port}", "--redis-url", redis_url]
    common += ["--data-dir", str(tmp_path / "data"), "--drain-notice", "0"]
    if how == "flag":
        process = await asyncio.to_thread(_serve, [*common, "--max-watchers", "1"])
    else:
        process = await asyncio.to_thread(_serve, common, {"PACKETBUS_MAX_WATCHERS": "1"})
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = task_pb2_grpc.TaskServiceStub(channel)
            calls = [stub.WatchTasks(task_pb2.WatchTasksRequest(queue=unique("q"))) for _ in "ab"]
            # Which of the two the server takes first is not fixed: one is refused.
            await until(lambda: any(call.done() for call in calls), timeout=15)
            refused = [call for call in calls if call.done()]
            assert len(refused) == 1
            assert await refused[0].code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            for call in calls:
                call.cancel()
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 30)


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--max-exports", "0"], {}),
        (["--max-subscribers", "many"], {}),
        (["--max-streams-per-peer", "٣"], {}),
        (["--max-redis-connections", "1e3"], {}),
        ([], {"PACKETBUS_MAX_TRANSFERS": "-1"}),
    ],
)
def test_a_bad_stream_cap_is_a_one_line_usage_error(args: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(
        [*SERVE, "--listen", "127.0.0.1:1", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "max-" in lines[0]
