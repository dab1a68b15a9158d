"""Subscriptions: order, resume after a cursor, start positions, reconnects."""

from __future__ import annotations

import asyncio

import grpc
import pytest

import packetbus
from packetbus_server import ServerConfig, start
from tests.conftest import free_port, new_packet


async def _take(subscription: packetbus.Subscription, n: int) -> list[packetbus.StoredPacket]:
    out: list[packetbus.StoredPacket] = []
    async with asyncio.timeout(10):
        async for stored in subscription:
            out.append(stored)
            if len(out) == n:
                break
    return out


async def test_earliest_gets_every_packet_in_dispatch_order_and_resume_gets_exactly_the_rest(
    client: packetbus.Client, topic: str
) -> None:
    packets = [new_packet(topic) for _ in range(250)]
    for offset in range(0, 250, 50):
        results = await client.dispatch_batch(packets[offset : offset + 50])
        assert all(r.WhichOneof("outcome") == "receipt" for r in results)
    sent = [p.tracking_id for p in packets]

    async with client.subscribe(
        topic, start=packetbus.EARLIEST, max_batch_packets=64
    ) as subscription:
        got = await _take(subscription, 250)
    assert [s.packet.tracking_id for s in got] == sent
    cursors = [s.receipt.cursor for s in got]
    assert len(set(cursors)) == 250

    x = got[99].receipt.cursor
    async with client.subscribe(topic, after=x) as resumed:
        rest = await _take(resumed, 150)
    assert [s.packet.tracking_id for s in rest] == sent[100:]

    # Nothing more than exactly those: a new packet is the next one delivered.
    extra = new_packet(topic)
    async with client.subscribe(topic, after=got[-1].receipt.cursor) as tail:
        await client.dispatch(extra)
        [next_one] = await _take(tail, 1)
    assert next_one.packet.tracking_id == extra.tracking_id


async def test_latest_starts_after_what_is_already_stored(
    client: packetbus.Client, topic: str
) -> None:
    old = new_packet(topic)
    await client.dispatch(old)
    subscription = client.subscribe(topic, start=packetbus.LATEST)
    reader = asyncio.create_task(_take(subscription, 1))
    # "Latest" is pinned when the stream opens, which no sleep can be sure of on a
    # busy machine: packets go out until it yields one, and that is never `old`.
    fresh: list[str] = []
    async with asyncio.timeout(20):
        while not reader.done():
            packet = new_packet(topic)
            await client.dispatch(packet)
            fresh.append(packet.tracking_id)
            await asyncio.wait({reader}, timeout=0.1)
    [got] = reader.result()
    await subscription.close()
    assert got.packet.tracking_id in fresh


async def test_expired_packets_are_not_delivered(client: packetbus.Client, topic: str) -> None:
    short = new_packet(topic, ttl_seconds=1)
    long = new_packet(topic)
    await client.dispatch_batch([short, long])
    await asyncio.sleep(1.2)
    async with client.subscribe(topic, start=packetbus.EARLIEST) as subscription:
        [first] = await _take(subscription, 1)
    assert first.packet.tracking_id == long.tracking_id
    with pytest.raises(packetbus.PacketbusError) as caught:
        await client.get_packet(short.tracking_id)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND


async def test_bad_subscriptions_are_invalid_argument(client: packetbus.Client) -> None:
    for kwargs, field in (
        ({"topic": "bad topic"}, "topic"),
        ({"topic": "ok", "after": "yesterday"}, "after_cursor"),
        ({"topic": "ok", "max_batch_packets": 5000}, "max_batch_packets"),
    ):
        subscription = client.subscribe(**kwargs)
        with pytest.raises(packetbus.PacketbusError) as caught:
            await _take(subscription, 1)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in caught.value.field_violations] == [field]


async def test_subscription_resumes_after_server_restart_without_gap_or_duplicate(
    redis_url: str, topic: str
) -> None:
    port = free_port()
    config = ServerConfig(listen=f"127.0.0.1:{port}", redis_url=redis_url)
    first = await start(config)
    async with await packetbus.Client.connect(f"127.0.0.1:{port}") as client:
        batch1 = [new_packet(topic) for _ in range(20)]
        await client.dispatch_batch(batch1)
        subscription = client.subscribe(topic, start=packetbus.EARLIEST, max_batch_packets=5)
        got = await _take(subscription, 20)

        await first.stop(grace=0)
        second = await start(config)
        try:
            batch2 = [new_packet(topic) for _ in range(20)]
            await client.dispatch_batch(batch2)
            got += await _take(subscription, 20)
        finally:
            await subscription.close()
            await second.stop(grace=0)

    assert [s.packet.tracking_id for s in got] == [p.tracking_id for p in batch1 + batch2]


async def test_sync_client_round_trip(target: str, topic: str) -> None:
    # The in-process server runs on this event loop, so the blocking client
    # runs in a worker thread, as it would in a program without asyncio.
    def use_sync_client() -> None:
        with packetbus.SyncClient.connect(target) as client:
            packet = new_packet(topic)
            receipt = client.dispatch(packet)
            assert client.get_packet(packet.tracking_id).receipt == receipt
            stream = client.subscribe(topic, start=packetbus.EARLIEST)
            first = next(stream)
            stream.close()
            assert first.packet.tracking_id == packet.tracking_id
            with pytest.raises(packetbus.PacketbusError) as caught:
                client.get_packet("nope")
            assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT

    await asyncio.to_thread(use_sync_client)
