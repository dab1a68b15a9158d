"""A store that evicts, a full store, a full disk, a store that refuses writes.

Each test runs its own Valkey (tests/_own_store.py), configured as the fault needs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
import redis.asyncio as redis_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.asyncio.cluster import RedisCluster

import packetbus
from packetbus.v1 import packet_service_pb2, packet_service_pb2_grpc
from packetbus_server import RunningServer, ServerConfig, start
from packetbus_server._embedded import EmbeddedValkey
from packetbus_server._eviction import EvictionPolicyError, problem, store_policies
from tests._cluster import start_cluster, stop_cluster
from tests._own_store import own_store
from tests.conftest import free_port, new_packet, run_cli, unique


def _config(url: str, data_dir: Path, **settings: object) -> ServerConfig:
    defaults: dict[str, object] = {"health_interval_seconds": 0.1, "retry_budget_seconds": 0.5}
    return ServerConfig(
        listen="127.0.0.1:0",
        redis_url=url,
        data_dir=data_dir,
        **{**defaults, **settings},  # type: ignore[arg-type]
    )


@asynccontextmanager
async def _serving(url: str, data_dir: Path, **settings: object) -> AsyncIterator[RunningServer]:
    srv = await start(_config(url, data_dir, **settings))
    try:
        yield srv
    finally:
        await srv.stop(grace=0, notice=0)


def _packet(topic: str, size: int = 2000) -> packetbus.Packet:
    packet = new_packet(topic)
    packet.raw.content_type = "application/octet-stream"
    packet.raw.data = b"x" * size
    return packet


async def _health(channel: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    return int(reply.status)


async def _dispatch_raw(channel: grpc.aio.Channel, topic: str) -> grpc.aio.AioRpcError | None:
    stub = packet_service_pb2_grpc.PacketServiceStub(channel)
    try:
        await stub.Dispatch(packet_service_pb2.DispatchRequest(packets=[_packet(topic)]))
    except grpc.aio.AioRpcError as exc:
        return exc
    return None


# --- a store that may evict -------------------------------------------------------


@pytest.mark.parametrize("policy", ["volatile-lru", "allkeys-lru", "volatile-ttl", "allkeys-lfu"])
async def test_a_store_that_may_evict_is_refused_at_start(tmp_path: Path, policy: str) -> None:
    with (
        own_store(tmp_path / "store", "--maxmemory-policy", policy) as url,
        pytest.raises(EvictionPolicyError) as refused,
    ):
        await start(_config(url, tmp_path / "data"))
    message = str(refused.value)
    assert f"maxmemory-policy is {policy!r}" in message
    assert "noeviction" in message
    assert "--allow-store-eviction" in message


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_refuses_a_store_that_may_evict_in_one_line(tmp_path: Path, workers: str) -> None:
    with own_store(tmp_path / "store", "--maxmemory-policy", "allkeys-lru") as url:
        done = run_cli(
            "serve",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--redis-url",
            url,
            "--data-dir",
            str(tmp_path / "data"),
            "--workers",
            workers,
            timeout=30,
        )
    assert done.returncode == 1, done.stdout + done.stderr
    # Warnings may come first (this store has no AOF); the refusal is the last word.
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("packetbus: cannot start: the store's maxmemory-policy is ")
    assert "'allkeys-lru'" in done.stderr
    assert "Traceback" not in done.stderr
    assert "serving on" not in done.stdout


async def test_the_policy_is_read_from_info_where_config_is_refused(tmp_path: Path) -> None:
    with own_store(tmp_path / "store", "--maxmemory-policy", "volatile-lru") as url:
        admin = redis_asyncio.Redis.from_url(url)
        await admin.acl_setuser(
            "noconfig", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-config"]
        )
        host = url.removeprefix("redis://")
        with pytest.raises(EvictionPolicyError, match="maxmemory-policy is 'volatile-lru'"):
            await start(_config(f"redis://noconfig:pw@{host}", tmp_path / "data"))
        await admin.config_set("maxmemory-policy", "noeviction")
        async with (
            _serving(f"redis://noconfig:pw@{host}", tmp_path / "data") as srv,
            grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel,
        ):
            assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
        await admin.aclose()


def test_a_policy_that_cannot_be_read_counts_as_one_that_may_evict() -> None:
    # Some managed stores answer "" for INFO's maxmemory_policy and refuse CONFIG.
    found = problem({"10.0.0.1:6379": None, "10.0.0.2:6379": "noeviction"})
    assert found is not None
    assert "cannot be read on 10.0.0.1:6379" in found
    assert "10.0.0.2" not in found
    assert problem({"a:1": "noeviction", "b:2": "noeviction"}) is None


async def test_a_policy_changed_under_a_running_server_stops_writes_until_it_is_back(
    tmp_path: Path,
) -> None:
    topic = unique("evict")
    with own_store(tmp_path / "store") as url:
        admin = redis_asyncio.Redis.from_url(url)
        async with (
            _serving(url, tmp_path / "data") as srv,
            grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel,
            await packetbus.Client.connect(f"127.0.0.1:{srv.port}", timeout=5) as client,
        ):
            kept = _packet(topic)
            await client.dispatch_batch([kept])
            serving: list[int] = []

            async def health_is(status: int) -> bool:
                serving.append(await _health(channel))
                return serving[-1] == status

            await admin.config_set("maxmemory-policy", "volatile-lru")
            await _eventually(lambda: health_is(health_pb2.HealthCheckResponse.NOT_SERVING))
            refused = await _dispatch_raw(channel, topic)
            assert refused is not None
            assert refused.code() == grpc.StatusCode.UNAVAILABLE
            assert "maxmemory-policy is 'volatile-lru'" in (refused.details() or "")
            assert "nothing was written" in (refused.details() or "")
            # The client is told so: refused before anything ran (ErrorInfo
            # STORE_MAY_EVICT), not an UNAVAILABLE whose outcome is open.
            with pytest.raises(packetbus.PacketbusError) as caught:
                await client.dispatch_batch([_packet(topic)], timeout=3)
            assert caught.value.code == grpc.StatusCode.UNAVAILABLE
            assert caught.value.outcome_unknown is False
            assert await admin.xlen(f"pb:{{{topic}}}:log") == 1
            # Reads still answer.
            found = await client.get_packet(kept.tracking_id)
            assert found.packet.tracking_id == kept.tracking_id

            await admin.config_set("maxmemory-policy", "noeviction")
            await _eventually(lambda: health_is(health_pb2.HealthCheckResponse.SERVING))
            assert await _dispatch_raw(channel, topic) is None
            assert await admin.xlen(f"pb:{{{topic}}}:log") == 2
        await admin.aclose()


async def _eventually(check: object, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():  # type: ignore[operator]
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_allow_store_eviction_serves_with_a_loud_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        own_store(tmp_path / "store", "--maxmemory-policy", "allkeys-lru") as url,
        caplog.at_level(logging.WARNING, logger="packetbus.server"),
    ):
        async with (
            _serving(url, tmp_path / "data", allow_store_eviction=True) as srv,
            grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel,
        ):
            assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
            assert await _dispatch_raw(channel, unique("allowed")) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "'allkeys-lru'" in w and "ACKNOWLEDGED PACKETS MAY BE LOST" in w for w in warnings
    ), warnings


def test_the_embedded_store_runs_with_noeviction_said_explicitly(tmp_path: Path) -> None:
    embedded = EmbeddedValkey(tmp_path)
    embedded.start()
    try:
        import redis

        with redis.Redis.from_url(embedded.url) as r:
            assert r.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert "maxmemory-policy noeviction" in (tmp_path / "valkey.conf").read_text()
    finally:
        embedded.stop()


@pytest.fixture
def own_cluster_url(tmp_path: Path) -> Iterator[str]:
    """A cluster of this test's own: it sets a node's eviction policy, which the
    session cluster's server would notice (and refuse writes) meanwhile."""
    url, nodes = start_cluster(tmp_path / "cluster")
    yield url
    stop_cluster(nodes)


@pytest.mark.slow
async def test_every_node_of_a_cluster_is_checked(own_cluster_url: str, tmp_path: Path) -> None:
    cluster_url = own_cluster_url
    cluster = RedisCluster.from_url(cluster_url)
    await cluster.initialize()
    try:
        nodes = cluster.get_nodes()
        assert len(await store_policies(cluster)) == len(nodes) == 3
        last = nodes[-1]
        await cluster.config_set("maxmemory-policy", "volatile-lru", target_nodes=last)
        try:
            # A fresh cluster client's first map (CLUSTER SLOTS, COMMAND) can take longer
            # than 0.5 s on a loaded machine: the start gets a budget that outlasts it.
            with pytest.raises(EvictionPolicyError) as refused:
                await start(_config(cluster_url, tmp_path / "data", retry_budget_seconds=3.0))
            assert f"maxmemory-policy is 'volatile-lru' on {last.name}" in str(refused.value)
        finally:
            await cluster.config_set("maxmemory-policy", "noeviction", target_nodes=last)
        async with _serving(cluster_url, tmp_path / "data", retry_budget_seconds=3.0) as srv:
            assert isinstance(srv.store.redis, RedisCluster)
    finally:
        await cluster.aclose()
