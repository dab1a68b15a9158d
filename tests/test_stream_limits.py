"""Streams with limits: every streaming method is capped per server and per
connection, refused at the door with RESOURCE_EXHAUSTED, and idle watchers never
take the Redis connections unary calls and health need."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
import redis.asyncio as redis_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.asyncio.cluster import RedisCluster

import packetbus
from packetbus import _retry_policy
from packetbus.v1 import (
    agent_service_pb2,
    agent_service_pb2_grpc,
    context_service_pb2,
    context_service_pb2_grpc,
    packet_service_pb2,
    packet_service_pb2_grpc,
    task_service_pb2,
    task_service_pb2_grpc,
)
from packetbus_server import RunningServer, ServerConfig, start
from tests._polling import until
from tests.conftest import new_packet, unique


def _streaming_methods() -> list[tuple[str, bool, bool]]:
    """(path, client streaming, server streaming) of every streaming method served,
    from the descriptors: a streaming method added later is covered too."""
    found = []
    # The client's retry policy lists every service served (its test checks so).
    for service in _retry_policy.SERVICES:
        for method in service.methods:
            if method.client_streaming or method.server_streaming:
                found.append(
                    (
                        f"/{service.full_name}/{method.name}",
                        method.client_streaming,
                        method.server_streaming,
                    )
                )
    return found


STREAMING = _streaming_methods()


def _same(data: bytes) -> bytes:
    return data


async def _endless() -> AsyncIterator[bytes]:
    # Sends nothing: a refused call ends before reading any message, and a message written as
    # the server's status arrives makes grpc's aio client replace that status with INTERNAL
    # "Internal error from Core" (grpc/grpc#36066), which is the client's race, not the
    # server's answer.
    await asyncio.Event().wait()
    yield b""


async def _refusal(
    channel: grpc.aio.Channel, path: str, client_streaming: bool, server_streaming: bool
) -> tuple[grpc.StatusCode, str, float]:
    """Call `path` with an empty request; how it ended and how long that took.
    A call that is admitted does not end: the caller's timeout fails the test."""
    started = time.monotonic()
    kinds = {"request_serializer": _same, "response_deserializer": _same}
    call: Any
    if client_streaming and server_streaming:
        call = channel.stream_stream(path, **kinds)(_endless())
    elif client_streaming:
        call = channel.stream_unary(path, **kinds)(_endless())
    else:
        call = channel.unary_stream(path, **kinds)(b"")
    try:
        async with asyncio.timeout(5):
            code = await call.code()
            details = await call.details()
    finally:
        call.cancel()
    return code, details, time.monotonic() - started


def _watch_tasks(channel: grpc.aio.Channel, queue: str) -> Any:
    stub = task_service_pb2_grpc.TaskServiceStub(channel)
    return stub.WatchTasks(task_service_pb2.WatchTasksRequest(queue=queue))


async def _serving(target: str) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        return int(reply.status)


def _open(srv: RunningServer, kind: str | None = None) -> Callable[[], int]:
    streams = srv.streams
    assert streams is not None
    return lambda: streams.open_streams(kind)


def _open_is(srv: RunningServer, kind: str, count: int) -> Callable[[], bool]:
    opened = _open(srv, kind)
    return lambda: opened() == count


def _other_connection(target: str) -> grpc.aio.Channel:
    # Channels to one address share one TCP connection unless told otherwise.
    return grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


@pytest.fixture
async def capped(redis_url: str) -> AsyncIterator[RunningServer]:
    srv = await start(
        ServerConfig(
            listen="127.0.0.1:0",
            redis_url=redis_url,
            max_watchers=3,
            max_streams_per_peer=4,
            # Small enough that idle watchers holding one each would exhaust it.
            max_redis_connections=4,
        )
    )
    try:
        yield srv
    finally:
        await srv.stop(grace=0, notice=0)


async def test_every_streaming_method_is_refused_at_once_beyond_the_connections_limit(
    capped: RunningServer,
) -> None:
    assert len(STREAMING) >= 9  # 8 packetbus streaming methods and Health.Watch
    target = f"127.0.0.1:{capped.port}"
    async with _other_connection(target) as full, _other_connection(target) as other:
        held = [
            _watch_tasks(full, unique("q")),
            packet_service_pb2_grpc.PacketServiceStub(full).Subscribe(
                packet_service_pb2.SubscribeRequest(topic=unique("t"))
            ),
        ]
        agents = agent_service_pb2_grpc.AgentServiceStub(full).WatchAgents(
            agent_service_pb2.WatchAgentsRequest()
        )
        health_watch = health_pb2_grpc.HealthStub(full).Watch(health_pb2.HealthCheckRequest())
        await until(lambda: _open(capped)() == 4)
        for path, client_streaming, server_streaming in STREAMING:
            code, details, took = await _refusal(full, path, client_streaming, server_streaming)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (path, code, details)
            assert "limit per connection" in details, details
            assert took < 2.0, (path, took)
        # Another connection is not held to this one's limit.
        elsewhere = _watch_tasks(other, unique("q"))
        await until(lambda: _open(capped)() == 5)
        assert await _serving(target) == health_pb2.HealthCheckResponse.SERVING
        for call in [*held, agents, health_watch, elsewhere]:
            call.cancel()
        await until(lambda: _open(capped)() == 0)


async def test_watch_streams_beyond_the_servers_limit_are_refused_and_harm_nothing(
    capped: RunningServer,
) -> None:
    target = f"127.0.0.1:{capped.port}"
    channels = [_other_connection(target) for _ in range(4)]
    try:
        watches = [
            _watch_tasks(channels[0], unique("q")),
            agent_service_pb2_grpc.AgentServiceStub(channels[1]).WatchAgents(
                agent_service_pb2.WatchAgentsRequest()
            ),
            context_service_pb2_grpc.ContextServiceStub(channels[2]).WatchContext(
                context_service_pb2.WatchContextRequest(scope=unique("s"))
            ),
        ]
        await until(lambda: _open(capped, "watch")() == 3)
        for path in (
            "/packetbus.v1.TaskService/WatchTasks",
            "/packetbus.v1.AgentService/WatchAgents",
            "/packetbus.v1.ContextService/WatchContext",
        ):
            code, details, took = await _refusal(channels[3], path, False, True)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (path, code, details)
            assert "3 open watch streams, its limit" in details, details
            assert took < 2.0
        # Other calls, on the store too, and health are unharmed.
        async with await packetbus.Client.connect(target) as client:
            topic = unique("t")
            results = await asyncio.gather(
                *(client.dispatch_batch([new_packet(topic)], timeout=5) for _ in range(20))
            )
            assert all(r.WhichOneof("outcome") == "receipt" for [r] in results)
        assert await _serving(target) == health_pb2.HealthCheckResponse.SERVING
        # A freed slot is taken again.
        watches[0].cancel()
        await until(lambda: _open(capped, "watch")() == 2)
        again = _watch_tasks(channels[3], unique("q"))
        await until(lambda: _open(capped, "watch")() == 3)
        for call in [*watches, again]:
            call.cancel()
    finally:
        for channel in channels:
            await channel.close()


async def _blocked_clients(r: redis_asyncio.Redis) -> int:
    """Clients blocked in a read on `r`'s database; on every node of a cluster (INFO
    asks one node; each test process has a cluster of its own)."""
    if isinstance(r, RedisCluster):
        replies = await r.info("clients", target_nodes=RedisCluster.ALL_NODES)
        return sum(int(reply["blocked_clients"]) for reply in replies.values())
    # Only this database's: other test processes share the machine's Redis, each in
    # a database of its own (conftest.worker_database), with blocked reads of theirs.
    db = str(r.connection_pool.connection_kwargs.get("db", 0))
    return sum(1 for c in await r.client_list() if "b" in c["flags"] and c["db"] == db)


async def test_idle_watchers_hold_no_connection_each_and_unary_calls_never_starve(
    redis_url: str, raw_redis: redis_asyncio.Redis
) -> None:
    # The store pool unary calls and health use holds 4 connections; 120 idle
    # watchers (100 on one queue, 20 on a queue each) each blocked in a read of
    # their own would need 120. Four connections, 30 streams each.
    srv = await start(
        ServerConfig(
            listen="127.0.0.1:0",
            redis_url=redis_url,
            max_redis_connections=4,
            max_streams_per_peer=30,
        )
    )
    target = f"127.0.0.1:{srv.port}"
    channels = [_other_connection(target) for _ in range(4)]
    shared = unique("q")
    before = await _blocked_clients(raw_redis)
    try:
        calls = [_watch_tasks(channels[i % 4], shared) for i in range(100)]
        calls += [_watch_tasks(channels[i % 4], unique("q")) for i in range(20)]
        await until(lambda: _open(srv, "watch")() == 120)
        # Every watch has fixed its start (its headers came): a task posted from
        # here on is an event each of them sees.
        async with asyncio.timeout(10):
            await asyncio.gather(*(call.initial_metadata() for call in calls))
        reads = srv.reads
        assert reads is not None
        await until(lambda: reads.reads_under_way() == 21)
        blocked = await _blocked_clients(raw_redis) - before
        # One blocked read for the 100 watchers of one queue, one per other queue.
        assert blocked <= 21 + 2, blocked
        started = time.monotonic()
        async with await packetbus.Client.connect(target) as client:
            topic = unique("t")
            results = await asyncio.gather(
                *(client.dispatch_batch([new_packet(topic)], timeout=5) for _ in range(40))
            )
        assert all(r.WhichOneof("outcome") == "receipt" for [r] in results)
        assert time.monotonic() - started < 5
        assert await _serving(target) == health_pb2.HealthCheckResponse.SERVING
        # Every watcher of the shared queue still gets its events.
        queue = packetbus.Client(channels[0], packetbus.ClientConfig()).task_queue(shared)
        await queue.post(packetbus.Task(id="t-1", description="do t-1"), origin="planner")
        async with asyncio.timeout(10):
            replies = await asyncio.gather(*(call.read() for call in calls[:100]))
        assert {r.events[0].task_id for r in replies} == {"t-1"}
        for call in calls:
            call.cancel()
        await until(lambda: _open(srv)() == 0)
    finally:
        for channel in channels:
            await channel.close()
        await srv.stop(grace=0, notice=0)


@pytest.mark.slow
async def test_3000_idle_watch_streams_leave_other_calls_and_health_unharmed(
    redis_url: str,
) -> None:
    srv = await start(ServerConfig(listen="127.0.0.1:0", redis_url=redis_url, max_watchers=3000))
    target = f"127.0.0.1:{srv.port}"
    channels = [_other_connection(target) for _ in range(30)]
    queues = [unique("q") for _ in range(30)]
    calls: list[Any] = []
    try:
        # Opened in waves, as clients come: a burst of thousands of calls at
        # once makes grpc itself cancel some before they reach the server.
        for wave in range(15):
            calls += [
                _watch_tasks(channels[i % 30], queues[i % 30])
                for i in range(wave * 200, wave * 200 + 200)
            ]
            await until(_open_is(srv, "watch", len(calls)), timeout=30)
        reads = srv.reads
        assert reads is not None
        await until(lambda: reads.reads_under_way() == 30)
        latencies = []
        async with await packetbus.Client.connect(target) as client:
            topic = unique("t")
            for _ in range(100):
                started = time.monotonic()
                [result] = await client.dispatch_batch([new_packet(topic)], timeout=5)
                latencies.append(time.monotonic() - started)
                assert result.WhichOneof("outcome") == "receipt"
        latencies.sort()
        assert latencies[98] < 1.0, latencies[-5:]
        assert await _serving(target) == health_pb2.HealthCheckResponse.SERVING
        async with _other_connection(target) as extra_channel:
            code, details, took = await _refusal(
                extra_channel, "/packetbus.v1.TaskService/WatchTasks", False, True
            )
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "3000 open watch streams" in details
        assert took < 2.0
    finally:
        for call in calls:
            call.cancel()
        for channel in channels:
            await channel.close()
        await srv.stop(grace=0, notice=0)


async def test_a_stream_from_now_sends_its_headers_once_started_so_an_act_after_them_is_seen(
    target: str,
) -> None:
    # Each stream "from now" fixes its start with a store read after it is
    # admitted; its headers say when that is done. Before, they came only with the
    # first response: a caller could not know when its stream began, and an event
    # caused in between was missed (the idle-watchers test's rare failure).
    async with _other_connection(target) as channel:
        queue, scope, topic = unique("q"), unique("s"), unique("t")
        calls = [
            _watch_tasks(channel, queue),
            agent_service_pb2_grpc.AgentServiceStub(channel).WatchAgents(
                agent_service_pb2.WatchAgentsRequest()
            ),
            context_service_pb2_grpc.ContextServiceStub(channel).WatchContext(
                context_service_pb2.WatchContextRequest(scope=scope)
            ),
            packet_service_pb2_grpc.PacketServiceStub(channel).Subscribe(
                packet_service_pb2.SubscribeRequest(topic=topic)
            ),
        ]
        try:
            async with asyncio.timeout(5):
                headers = await asyncio.gather(*(call.initial_metadata() for call in calls))
            assert all(h is not None for h in headers)
            # Acted on after the headers: the watch sees it.
            tasks = packetbus.Client(channel, packetbus.ClientConfig()).task_queue(queue)
            await tasks.post(packetbus.Task(id="t-1", description="do t-1"), origin="planner")
            async with asyncio.timeout(5):
                reply = await calls[0].read()
            assert [e.task_id for e in reply.events] == ["t-1"]
        finally:
            for call in calls:
                call.cancel()
