"""A server run under a policy file the test rewrites, and how its refusals read.

Shared by the tests of governance beyond Dispatch (test_governed_posts.py,
test_governed_context.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from google.rpc import error_details_pb2

import packetbus
from packetbus_server import Limits, RunningServer, ServerConfig, start

ALLOW_ALL = 'default = "allow"\n'
REJECT_ALL = 'default = "reject"\n'
DEFAULT_REASON = "no rule matched; the policy default is reject"


@contextlib.asynccontextmanager
async def policy_server(redis_url: str, path: Path) -> AsyncIterator[RunningServer]:
    """A server on loopback that reads the policy at `path` (reloaded every 50 ms)."""
    await asyncio.to_thread(path.write_text, ALLOW_ALL)
    srv = await start(
        ServerConfig(
            listen="127.0.0.1:0",
            redis_url=redis_url,
            limits=Limits(policy_reload_seconds=0.05),
            policy_file=path,
        )
    )
    try:
        yield srv
    finally:
        await srv.stop(grace=0)


async def set_policy(client: packetbus.Client, path: Path, text: str) -> str:
    """Write the policy file and wait until the server runs it; its version (SHA-256 hex)."""
    version = hashlib.sha256(text.encode()).hexdigest()
    await asyncio.to_thread(path.write_text, text)
    async with asyncio.timeout(5):
        while (await client.get_policy()).version != version:  # noqa: ASYNC110 (polling the server)
            await asyncio.sleep(0.02)
    return version


def error_info(exc: packetbus.PacketbusError) -> dict[str, str]:
    """The ErrorInfo of a failed call: {"reason": ..., **metadata}; asserts its domain."""
    assert exc.status is not None
    for detail in exc.status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            assert info.domain == "packetbus"
            return {"reason": info.reason, **info.metadata}
    raise AssertionError(f"no ErrorInfo in {exc}")


def rpc_error_info(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """As error_info, for a raw stub's failed call."""
    return error_info(packetbus.PacketbusError.from_rpc_error(error))
