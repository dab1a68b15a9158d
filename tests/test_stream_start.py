"""Streams "from now" that drop before their first event resume where they started.

The server sends the cursor a LATEST subscription or a from-now watch starts after as
the response header `packetbus-start-cursor` (packetbus.stream_start); the client
reopens a dropped stream after it. Before, a subscription that had delivered nothing
reopened at LATEST and silently skipped what was stored while it was away, and a
watch raised UNAVAILABLE instead of resuming.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, TypeVar, cast

import grpc

import packetbus
from packetbus.stream_start import START_CURSOR_HEADER, start_cursor
from packetbus.v1 import packet_service_pb2, packet_service_pb2_grpc
from packetbus_server import RunningServer, ServerConfig, start
from packetbus_server import _keys as keys
from tests.conftest import free_port, new_packet, unique

T = TypeVar("T")


async def _next(stream: AsyncIterator[T]) -> T:
    return await anext(stream)


async def _until(condition: Any, what: str, seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - polls another task's state
            await asyncio.sleep(0.02)
    assert condition(), what


async def test_header_only_for_streams_from_now(client: packetbus.Client, target: str) -> None:
    topic = unique("t")
    [receipt] = [r.receipt for r in await client.dispatch_batch([new_packet(topic)])]
    async with grpc.aio.insecure_channel(target) as channel:
        stub = packet_service_pb2_grpc.PacketServiceStub(channel)

        async def header(**start_at: Any) -> str | None:
            call = stub.Subscribe(packet_service_pb2.SubscribeRequest(topic=topic, **start_at))
            try:
                return start_cursor(await call.initial_metadata())
            finally:
                call.cancel()

        assert await header(start_position=packetbus.LATEST) == receipt.cursor
        assert await header() == receipt.cursor  # LATEST is the default
        assert await header(start_position=packetbus.EARLIEST) is None
        assert await header(after_cursor=receipt.cursor) is None
        # A topic that never had a packet starts after "0-0".
        call = stub.Subscribe(packet_service_pb2.SubscribeRequest(topic=unique("empty")))
        try:
            metadata = await call.initial_metadata()
        finally:
            call.cancel()
        assert dict(metadata)[START_CURSOR_HEADER] == "0-0"


class _Relay:
    """A server on a fixed port that a test stops and starts again (the one its
    subscriber or watcher uses), beside a producer's server on the same store."""

    def __init__(self, redis_url: str) -> None:
        self.config = ServerConfig(listen=f"127.0.0.1:{free_port()}", redis_url=redis_url)
        self.target = self.config.listen
        self.running: RunningServer | None = None
        self.producer: RunningServer | None = None

    async def __aenter__(self) -> _Relay:
        self.running = await start(self.config)
        self.producer = await start(
            ServerConfig(listen="127.0.0.1:0", redis_url=self.config.redis_url)
        )
        return self

    @property
    def producer_target(self) -> str:
        assert self.producer is not None
        return f"127.0.0.1:{self.producer.port}"

    async def stop(self) -> None:
        """Stop the relay: its streams drop (UNAVAILABLE)."""
        assert self.running is not None
        await self.running.stop(grace=0)
        self.running = None

    async def restart(self) -> None:
        self.running = await start(self.config)

    async def __aexit__(self, *exc: object) -> None:
        for server in (self.running, self.producer):
            if server is not None:
                await server.stop(grace=0)


async def test_subscription_dropped_before_its_first_packet_misses_nothing(
    redis_url: str,
) -> None:
    topic = unique("t")
    async with (
        _Relay(redis_url) as relay,
        await packetbus.Client.connect(relay.target) as client,
        await packetbus.Client.connect(relay.producer_target) as producer,
    ):
        old = [new_packet(topic) for _ in range(3)]
        receipts = [r.receipt for r in await producer.dispatch_batch(old)]
        subscription = client.subscribe(topic, start=packetbus.LATEST)
        taking = asyncio.create_task(_next(subscription))
        # Open: it knows where it started before any packet came.
        await _until(lambda: subscription.cursor is not None, "no start cursor")
        assert subscription.cursor == receipts[-1].cursor

        await relay.stop()
        missed = [new_packet(topic) for _ in range(5)]
        await producer.dispatch_batch(missed)  # stored while it is away
        await relay.restart()
        got = [await asyncio.wait_for(taking, 20)]
        async with asyncio.timeout(10):
            async for stored in subscription:
                got.append(stored)
                if len(got) == len(missed):
                    break
        await subscription.close()
    assert [s.packet.tracking_id for s in got] == [p.tracking_id for p in missed]


async def test_task_watch_dropped_before_its_first_event_resumes_where_it_started(
    redis_url: str,
) -> None:
    queue = unique("q")
    async with (
        _Relay(redis_url) as relay,
        await packetbus.Client.connect(relay.target) as client,
        await packetbus.Client.connect(relay.producer_target) as producer,
    ):
        tasks = producer.task_queue(queue)
        await tasks.post(packetbus.Task(id="before"), origin="planner")  # not news
        events = client.task_queue(queue).watch()
        first_event = asyncio.create_task(_next(events))
        assert relay.running is not None
        await _open_watches(relay.running, 1)
        await relay.stop()
        posted = [
            await tasks.post(packetbus.Task(id=f"meanwhile-{i}"), origin="planner")
            for i in range(3)
        ]
        await relay.restart()
        seen = [await asyncio.wait_for(first_event, 20)]
        async with asyncio.timeout(10):
            while len(seen) < len(posted):
                seen.append(await anext(events))
        await cast(AsyncGenerator[Any, None], events).aclose()
    assert [e.task_id for e in seen] == [t.task_id for t in posted]
    assert [t.task_id for t in posted] == ["meanwhile-0", "meanwhile-1", "meanwhile-2"]


async def _open_watches(server: Any, count: int) -> None:
    streams = server.streams
    assert streams is not None
    await _until(lambda: streams.open_streams("watch") == count, f"{count} open watches")


async def test_latest_after_a_whole_log_expired_resumes_without_a_false_gap(
    client: packetbus.Client, target: str, raw_redis: Any
) -> None:
    topic = unique("t")
    [gone] = [r.receipt for r in await client.dispatch_batch([new_packet(topic, ttl_seconds=1)])]
    async with asyncio.timeout(15):
        while await raw_redis.exists(keys.topic_log(topic)):  # noqa: ASYNC110 - the store
            await asyncio.sleep(0.1)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = packet_service_pb2_grpc.PacketServiceStub(channel)
        call = stub.Subscribe(packet_service_pb2.SubscribeRequest(topic=topic))
        try:
            started = start_cursor(await call.initial_metadata())
        finally:
            call.cancel()
    # It starts after the packet the log lost, not at "0-0" before it.
    assert started == gone.cursor
    # So resuming there is told of no gap (a gap would raise SubscriptionGapError).
    fresh = new_packet(topic)
    await client.dispatch(fresh)
    async with client.subscribe(topic, after=started) as resumed:
        got = await asyncio.wait_for(anext(aiter(resumed)), 10)
    assert got.packet.tracking_id == fresh.tracking_id
