"""Replies packed by bytes: 20 packets of 900 KiB each (each under the 1 MiB packet
limit, together far over the 16 MiB message limit) flow through every reply that
carries packets, with default settings."""

from __future__ import annotations

import asyncio
import time

import grpc
import redis.asyncio as redis_asyncio

import packetbus
from packetbus.v1 import (
    carcel_service_pb2,
    contents_pb2,
    packet_service_pb2,
    packet_service_pb2_grpc,
)
from packetbus_server import _keys
from packetbus_server._group_store import GroupStore
from packetbus_server._limits import Limits
from packetbus_server._store import PacketStore
from tests.conftest import new_packet

COUNT = 20
DATA_BYTES = 900 * 1024
BUDGET = Limits().reply_budget_bytes


def big_packet(topic: str) -> packetbus.Packet:
    return new_packet(
        topic,
        raw=contents_pb2.RawContents(
            content_type="application/octet-stream", data=b"x" * DATA_BYTES
        ),
    )


async def dispatch_big(client: packetbus.Client, topic: str, n: int = COUNT) -> list[str]:
    packets = [big_packet(topic) for _ in range(n)]
    for offset in range(0, n, 4):  # 4 x 900 KiB per request: under the request limit
        results = await client.dispatch_batch(packets[offset : offset + 4])
        assert [r.WhichOneof("outcome") for r in results] == ["receipt"] * len(results)
    return [p.tracking_id for p in packets]


async def test_subscribe_from_earliest_delivers_20_packets_of_900_kib(
    client: packetbus.Client, target: str, topic: str
) -> None:
    sent = await dispatch_big(client, topic)
    got: list[str] = []
    async with client.subscribe(topic, start=packetbus.EARLIEST, timeout=60) as sub:
        async for stored in sub:
            assert len(stored.packet.raw.data) == DATA_BYTES
            got.append(stored.packet.tracking_id)
            if len(got) == COUNT:
                break
    assert got == sent

    # Through a channel with gRPC's default 4 MiB receive limit: every reply fits.
    async with grpc.aio.insecure_channel(target) as channel:
        stub = packet_service_pb2_grpc.PacketServiceStub(channel)
        call = stub.Subscribe(
            packet_service_pb2.SubscribeRequest(
                topic=topic, start_position=packet_service_pb2.START_POSITION_EARLIEST
            ),
            timeout=60,
        )
        raw: list[str] = []
        async for response in call:
            assert 0 < response.ByteSize() <= BUDGET
            raw += [s.packet.tracking_id for s in response.packets]
            if len(raw) == COUNT:
                break
        call.cancel()
    assert raw == sent


async def test_a_consumer_group_gets_each_of_20_big_packets_on_its_first_attempt(
    client: packetbus.Client, topic: str
) -> None:
    await client.create_consumer_group(
        topic, "g", start=packetbus.EARLIEST, max_delivery_attempts=2
    )
    sent = await dispatch_big(client, topic)
    counts: dict[str, int] = {}
    async with asyncio.timeout(60), client.consume(topic, "g", consumer="c1") as consumer:
        async for delivery in consumer:
            assert len(delivery.packet.packet.raw.data) == DATA_BYTES
            counts[delivery.packet.packet.tracking_id] = delivery.delivery_count
            await delivery.ack()
            if len(counts) == COUNT:
                break
    assert counts == dict.fromkeys(sent, 1)
    group = await client.get_consumer_group(topic, "g")
    assert group.outstanding == 0
    assert [e async for e in client.carcel_entries(topic)] == []


async def test_export_streams_20_big_packets_and_their_carcel_entries(
    client: packetbus.Client, topic: str
) -> None:
    sent = await dispatch_big(client, topic)
    exported = [s.packet.tracking_id async for s in client.export_packets(topic, timeout=60)]
    assert exported == sent
    sizes = []
    async for response in client.export(topic, timeout=60):
        sizes.append(response.ByteSize())
    assert max(sizes) <= BUDGET
    assert len(sizes) >= 18 * 1024 * 1024 // BUDGET


async def _carcel_all(client: packetbus.Client, topic: str, sent: list[str]) -> None:
    """Every packet of `topic` into the carcel: nacked on its one allowed attempt."""
    await client.create_consumer_group(
        topic, "g", start=packetbus.EARLIEST, max_delivery_attempts=1
    )
    seen: set[str] = set()
    async with asyncio.timeout(60), client.consume(topic, "g", consumer="c1") as consumer:
        async for delivery in consumer:
            seen.add(delivery.packet.packet.tracking_id)
            await delivery.nack()
            if len(seen) == COUNT:
                break
    assert seen == set(sent)
    # The nacked ones come back past their last attempt: the next pull carcels them.
    async with client.consume(topic, "g", consumer="c2") as consumer:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if len([e async for e in client.carcel_entries(topic)]) == COUNT:
                return
            await asyncio.sleep(0.2)
        raise AssertionError("not every packet reached the carcel")


async def test_carcel_listing_pages_20_big_entries_by_bytes(
    client: packetbus.Client, topic: str
) -> None:
    sent = await dispatch_big(client, topic)
    await _carcel_all(client, topic, sent)

    pages = []
    token = ""
    while True:
        response = await client._list_carcel(
            carcel_service_pb2.ListCarcelEntriesRequest(topic=topic, page_token=token), 30
        )
        pages.append(response)
        token = response.next_page_token
        if not token:
            break
    listed = [e.packet.packet.tracking_id for p in pages for e in p.entries]
    assert listed == sent
    assert all(p.ByteSize() <= BUDGET for p in pages)
    assert len(pages) == -(-COUNT // (BUDGET // pages[0].entries[0].ByteSize()))
    exported = [
        e.packet.packet.tracking_id
        async for r in client.export(topic, include_carcel_entries=True, timeout=60)
        for e in r.carcel_entries
    ]
    assert exported == sent


async def test_server_info_publishes_the_largest_reply_the_client_accepts(
    client: packetbus.Client,
) -> None:
    info = await client.server_info()
    assert info.limits.max_response_bytes == 16 * 1024 * 1024
    assert client.config.max_message_bytes >= info.limits.max_response_bytes


async def _dispatch_sized(client: packetbus.Client, topic: str, n: int, size: int) -> list[str]:
    packets = [
        new_packet(topic, raw=contents_pb2.RawContents(content_type="a/b", data=b"y" * size))
        for _ in range(n)
    ]
    results = await client.dispatch_batch(packets)
    assert [r.WhichOneof("outcome") for r in results] == ["receipt"] * n
    return [p.tracking_id for p in packets]


async def _pending_counts(raw: redis_asyncio.Redis, topic: str) -> list[int]:
    rows = await raw.xpending_range(_keys.topic_log(topic), "g", "-", "+", 100)
    return [int(r["times_delivered"]) for r in rows]


async def test_a_pull_leases_new_entries_by_bytes_and_leaves_the_rest_unread(
    client: packetbus.Client, topic: str, raw_redis: redis_asyncio.Redis
) -> None:
    store = GroupStore(raw_redis, retry_budget=5, carcel_retention_ms=60_000)
    await client.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
    sent = await _dispatch_sized(client, topic, 5, 100 * 1024)
    taken: list[tuple[str, int]] = []
    # Two of about 200 KiB (packet and content) fit in 450 KiB, a third does not;
    # one byte still leases one entry, however large.
    for max_bytes, expect in ((450 * 1024, 2), (1, 1), (450 * 1024, 2), (450 * 1024, 0)):
        pulled = await store.pull(topic, "g", f"c{len(taken)}", 10, max_bytes=max_bytes)
        assert pulled is not None
        assert len(pulled.entries) == expect
        taken += [(e.tracking_id, e.count) for e in pulled.entries]
        # What did not fit was never leased: only what was taken is pending.
        assert await _pending_counts(raw_redis, topic) == [1] * len(taken)
    assert taken == [(t, 1) for t in sent]


async def test_a_look_for_run_out_leases_gives_back_what_does_not_fit_uncounted(
    client: packetbus.Client, topic: str, raw_redis: redis_asyncio.Redis
) -> None:
    store = GroupStore(raw_redis, retry_budget=5, carcel_retention_ms=60_000)
    await client.create_consumer_group(
        topic, "g", start=packetbus.EARLIEST, ack_deadline_seconds=1, max_delivery_attempts=2
    )
    sent = await _dispatch_sized(client, topic, 5, 100 * 1024)
    first = await store.pull(topic, "g", "a", 10, max_bytes=1 << 30)
    assert first is not None
    assert len(first.entries) == 5
    await asyncio.sleep(1.1)  # every lease runs out (1 s deadline)
    again: list[tuple[str, int]] = []
    for _ in range(3):
        pulled = await store.pull(topic, "g", "b", 10, max_bytes=450 * 1024, scan=True)
        assert pulled is not None
        again += [(e.tracking_id, e.count) for e in pulled.entries]
    # Each came back once, on its second attempt; none was claimed and given back
    # with an attempt counted.
    assert again == [(t, 2) for t in sent]
    assert await _pending_counts(raw_redis, topic) == [2] * 5


async def test_a_subscription_read_stops_at_the_byte_budget(
    client: packetbus.Client, topic: str, raw_redis: redis_asyncio.Redis
) -> None:
    store = PacketStore(raw_redis, retention_ms=3_600_000, retry_budget=5)
    sent = await _dispatch_sized(client, topic, 5, 100 * 1024)
    whole = await store.follow(topic, "0-0", count=10)
    assert (len(whole.entries), whole.complete) == (len(sent), True)
    # Two of about 200 KiB fit in 450 KiB; one byte still reads one entry; and a
    # read cut short is not the log's end.
    for max_bytes, expect in ((450 * 1024, 2), (1, 1)):
        page = await store.follow(topic, "0-0", count=10, max_bytes=max_bytes)
        assert [e.cursor for e in page.entries] == [e.cursor for e in whole.entries][:expect]
        assert page.last_cursor == whole.entries[expect - 1].cursor
        assert not page.complete
