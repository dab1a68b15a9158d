"""grpc_server_handled_total counts the code the client saw when a call's deadline
passes while its handler runs: DEADLINE_EXCEEDED, not CANCELLED (grpc.aio cancels
the handler in both cases)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from prometheus_client import REGISTRY

from packetbus.v1 import packet_service_pb2, packet_service_pb2_grpc
from packetbus_server import RunningServer

_SUBSCRIBE = {
    "grpc_type": "server_stream",
    "grpc_service": "packetbus.v1.PacketService",
    "grpc_method": "Subscribe",
}


def _handled(code: str) -> float:
    labels = {**_SUBSCRIBE, "grpc_code": code}
    return REGISTRY.get_sample_value("grpc_server_handled_total", labels) or 0.0


async def test_a_deadline_that_passes_counts_as_deadline_exceeded(
    server: RunningServer, topic: str
) -> None:
    before = {code: _handled(code) for code in ("DEADLINE_EXCEEDED", "CANCELLED")}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = packet_service_pb2_grpc.PacketServiceStub(channel)
        call = stub.Subscribe(packet_service_pb2.SubscribeRequest(topic=topic), timeout=0.5)
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            async for _ in call:
                pass
    assert ended.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    # The handler ends (and is counted) just after the client saw its status.
    for _ in range(1000):  # up to 10 s
        if _handled("DEADLINE_EXCEEDED") != before["DEADLINE_EXCEEDED"]:
            break
        await asyncio.sleep(0.01)
    assert _handled("DEADLINE_EXCEEDED") == before["DEADLINE_EXCEEDED"] + 1
    assert _handled("CANCELLED") == before["CANCELLED"]
