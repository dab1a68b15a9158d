"""The client library's own behaviour: automatic batching, flow control, retries, errors."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
import pytest

import packetbus
from packetbus._batcher import Batcher
from packetbus._stopping import cancel_and_wait
from packetbus.v1 import packet_service_pb2
from packetbus_server import RunningServer, ServerConfig, start
from tests._counting import CountingInterceptor
from tests.conftest import free_port, new_packet

DISPATCH = "/packetbus.v1.PacketService/Dispatch"


async def test_concurrent_dispatches_share_a_few_calls(target: str, topic: str) -> None:
    counter = CountingInterceptor()
    channel = grpc.aio.insecure_channel(target, interceptors=[counter])
    # Unary calls, to count them here (tests/test_dispatch_stream.py counts the
    # batches on a dispatch stream).
    config = packetbus.ClientConfig(
        batching=packetbus.BatchSettings(max_packets=250, max_latency=1.0, use_stream=False)
    )
    async with packetbus.Client(channel, config) as client:
        receipts = await asyncio.gather(*(client.dispatch(new_packet(topic)) for _ in range(1000)))
    assert len({r.cursor for r in receipts}) == 1000
    assert counter.calls[DISPATCH] == 4


async def test_rejected_packet_in_an_auto_batch_fails_alone(
    client: packetbus.Client, topic: str
) -> None:
    good = [new_packet(topic) for _ in range(3)]
    bad = new_packet(topic)
    bad.finding.claim = "x"
    bad.finding.confidence = 2.0
    outcomes = await asyncio.gather(
        *(client.dispatch(p) for p in [*good, bad]), return_exceptions=True
    )
    assert all(isinstance(o, packetbus.Receipt) for o in outcomes[:3])
    error = outcomes[3]
    assert isinstance(error, packetbus.PacketbusError)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.field_violations] == ["finding.confidence"]


async def test_flow_control_bounds_outstanding_packets() -> None:
    in_flight = 0
    peak = 0
    release = asyncio.Event()

    async def send(
        packets: Sequence[packetbus.Packet], deadline: float
    ) -> list[packet_service_pb2.DispatchResult]:
        nonlocal in_flight, peak
        in_flight += len(packets)
        peak = max(peak, in_flight)
        await release.wait()
        in_flight -= len(packets)
        return [packet_service_pb2.DispatchResult(tracking_id=p.tracking_id) for p in packets]

    settings = packetbus.BatchSettings(
        max_packets=10, max_latency=0.001, max_outstanding_packets=25, max_concurrent_batches=8
    )
    batcher = Batcher(send, settings)
    submitted = 0

    async def submit_all() -> None:
        nonlocal submitted
        for _ in range(100):
            await batcher.submit(new_packet("t"), deadline=1e12)
            submitted += 1

    producer = asyncio.create_task(submit_all())
    await asyncio.sleep(0.2)
    assert submitted == 25  # the producer waits for room instead of buffering more
    release.set()
    await producer
    await batcher.close()
    assert peak <= 25


async def test_unavailable_is_retried_until_the_server_appears(redis_url: str) -> None:
    port = free_port()
    client = await packetbus.Client.connect(f"127.0.0.1:{port}", timeout=None)
    packet = new_packet("late")

    async def start_later() -> RunningServer:
        await asyncio.sleep(0.5)
        return await start(ServerConfig(listen=f"127.0.0.1:{port}", redis_url=redis_url))

    starter = asyncio.create_task(start_later())
    try:
        [result] = await client.dispatch_batch([packet], timeout=15)
        assert result.WhichOneof("outcome") == "receipt"
    finally:
        srv = await starter
        await client.close()
        await srv.stop(grace=0)


async def test_connect_to_nothing_is_unavailable_quickly() -> None:
    with pytest.raises(packetbus.PacketbusError) as caught:
        await packetbus.Client.connect(f"127.0.0.1:{free_port()}", timeout=0.5)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


async def test_timeout_is_deadline_exceeded(target: str) -> None:
    async with await packetbus.Client.connect(target) as client:
        with pytest.raises(packetbus.PacketbusError) as caught:
            await client.dispatch_batch([new_packet("t")], timeout=0.000001)
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_cancel_and_wait_stops_a_task_and_raises_what_it_failed_with() -> None:
    sleeper = asyncio.create_task(asyncio.sleep(60))
    await asyncio.sleep(0)
    await cancel_and_wait(sleeper)
    assert sleeper.cancelled()

    async def broken() -> None:
        raise RuntimeError("the loop broke")

    failed = asyncio.create_task(broken())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="the loop broke"):
        await cancel_and_wait(failed)
    await cancel_and_wait(None)
