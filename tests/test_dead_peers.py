"""Dead peers: a client that vanished without FIN/RST loses its streams and slots.

A TCP proxy between client and server stops forwarding but keeps its sockets
open (tests/_proxy.py `freeze`). The server's own keepalive pings go unanswered,
so it closes the connection within keepalive + keepalive timeout, ending the
streams on it and freeing their slots. Intervals are scaled down (1 s + 1 s).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest

import packetbus
from packetbus.v1 import packet_service_pb2, packet_service_pb2_grpc
from packetbus_server import Limits, RunningServer, ServerConfig, start
from tests._polling import until
from tests._proxy import FaultyProxy
from tests.conftest import new_packet, unique

KEEPALIVE = 1.0
KEEPALIVE_TIMEOUT = 1.0
# What the test allows beyond keepalive + timeout on a loaded 2-core box.
SLACK = 6.0


@pytest.fixture
async def dead_peer_server(redis_url: str) -> AsyncIterator[RunningServer]:
    srv = await start(
        ServerConfig(
            listen="127.0.0.1:0",
            redis_url=redis_url,
            max_subscribers=3,
            keepalive_seconds=KEEPALIVE,
            keepalive_timeout_seconds=KEEPALIVE_TIMEOUT,
            limits=Limits(min_ack_deadline_seconds=1),
        )
    )
    try:
        yield srv
    finally:
        await srv.stop(grace=0, notice=0)


@pytest.fixture
async def proxy(dead_peer_server: RunningServer) -> AsyncIterator[FaultyProxy]:
    p = FaultyProxy(dead_peer_server.port)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


def _subscribe(
    channel: grpc.aio.Channel, topic: str
) -> grpc.aio.UnaryStreamCall[packet_service_pb2.SubscribeRequest, object]:
    stub = packet_service_pb2_grpc.PacketServiceStub(channel)
    return stub.Subscribe(
        packet_service_pb2.SubscribeRequest(
            topic=topic, start_position=packet_service_pb2.START_POSITION_EARLIEST
        )
    )


async def _first_read_code(channel: grpc.aio.Channel, topic: str) -> grpc.StatusCode:
    """OK when a subscription from the start of `topic` (which holds a packet) is
    admitted and delivers it; otherwise the code it was refused with."""
    call = _subscribe(channel, topic)
    try:
        async with asyncio.timeout(5):
            await call.read()
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    finally:
        call.cancel()


async def test_a_vanished_subscribers_slots_are_freed_within_the_keepalive_bound(
    dead_peer_server: RunningServer, proxy: FaultyProxy
) -> None:
    direct_target = f"127.0.0.1:{dead_peer_server.port}"
    topic = unique("dead")
    async with await packetbus.Client.connect(direct_target) as sender:
        [result] = await sender.dispatch_batch([new_packet(topic)])
    assert result.WhichOneof("outcome") == "receipt"

    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}") as far,
        grpc.aio.insecure_channel(direct_target) as near,
    ):
        held = [_subscribe(far, topic) for _ in range(3)]
        for call in held:
            async with asyncio.timeout(10):
                await call.read()  # admitted: it holds a slot
        assert dead_peer_server.streams is not None
        assert dead_peer_server.streams.open_streams("subscribe") == 3
        assert await _first_read_code(near, topic) == grpc.StatusCode.RESOURCE_EXHAUSTED

        proxy.freeze()
        frozen_at = time.monotonic()
        while (code := await _first_read_code(near, topic)) != grpc.StatusCode.OK:
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert time.monotonic() - frozen_at < KEEPALIVE + KEEPALIVE_TIMEOUT + SLACK
            await asyncio.sleep(0.2)
        freed_after = time.monotonic() - frozen_at
        # Not before the peer could have answered a ping.
        assert freed_after >= KEEPALIVE * 0.5, freed_after
        for call in held:
            call.cancel()


async def test_a_vanished_consumers_pull_slot_and_deliveries_come_back(
    dead_peer_server: RunningServer, proxy: FaultyProxy
) -> None:
    direct_target = f"127.0.0.1:{dead_peer_server.port}"
    topic = unique("deadpull")
    async with await packetbus.Client.connect(direct_target) as survivor_client:
        await survivor_client.create_consumer_group(
            topic, "g", start=packetbus.EARLIEST, ack_deadline_seconds=1
        )
        packets = [new_packet(topic) for _ in range(5)]
        results = await survivor_client.dispatch_batch(packets)
        assert all(r.WhichOneof("outcome") == "receipt" for r in results)
        sent = {p.tracking_id for p in packets}

        far_client = await packetbus.Client.connect(f"127.0.0.1:{proxy.port}")
        # Three Pull streams through the proxy hold every Pull slot (3); the
        # first takes all five deliveries and never settles them.
        far_consumers = [
            far_client.consume(topic, "g", consumer=f"far{i}", max_outstanding_packets=5)
            for i in range(3)
        ]
        held: set[str] = set()
        async with asyncio.timeout(10):
            while len(held) < 5:
                held.add((await anext(far_consumers[0])).packet.packet.tracking_id)
        assert held == sent
        # The other two wait (for the leases that run out), holding their slots:
        # the survivor below gets a Pull slot only once the dead ones are freed.
        waiting = [asyncio.ensure_future(anext(c)) for c in far_consumers[1:]]
        streams = dead_peer_server.streams
        assert streams is not None
        await until(lambda: streams.open_streams("pull") == 3)

        proxy.freeze()
        frozen_at = time.monotonic()
        got: dict[str, int] = {}
        async with (
            survivor_client.consume(topic, "g", consumer="survivor") as survivor,
            asyncio.timeout(KEEPALIVE + KEEPALIVE_TIMEOUT + SLACK + 2),
        ):
            async for delivery in survivor:
                got[delivery.packet.packet.tracking_id] = delivery.delivery_count
                await delivery.ack()
                if set(got) == sent:
                    break
        assert set(got) == sent
        # Delivered before (to the far consumers, whose leases ran out), never lost.
        assert min(got.values()) >= 2
        assert time.monotonic() - frozen_at < KEEPALIVE + KEEPALIVE_TIMEOUT + SLACK + 2
        proxy.cut_all()
        for task in waiting:
            task.cancel()
        for consumer in far_consumers:
            await consumer.close(timeout=1)
        await far_client.close()
