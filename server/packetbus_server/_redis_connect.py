"""Connecting to the store: a single Redis or a Redis Cluster, whichever a URL points
at, with the store's own retry policy and batch encoder.

Apart from the store (_store) because it is used on its own: by start
(_store_connection), by blocking reads' own pool (_running) and by workers
(_workers), none of which needs a PacketStore to connect.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ._cluster_client import StoreCluster
from ._durability import DurableRedis, Waits
from ._key_types import StoreRedis
from ._resp import (
    BatchEncodingConnection,
    BatchEncodingSSLConnection,
    BatchEncodingUnixConnection,
)
from ._scripts import RedisClient


async def connect_redis(
    url: str,
    *,
    max_connections: int = 1024,
    socket_timeout: float = 5.0,
    cluster: bool | None = None,
    wait_for_fsync: bool = False,
) -> RedisClient:
    """Connect to a single Redis or a Redis Cluster, whichever `url` points at
    (`cluster`: known already, not asked again), with at most `max_connections`
    connections (per node on a cluster); a reply not there within
    `socket_timeout` seconds (blocking reads: past their block) fails the attempt.

    redis-py's own retries are switched off: the store retries (with_retries)
    at the level of whole idempotent operations, bounded by the RPC deadline,
    and stacking a second retry loop under it would multiply attempts.

    `wait_for_fsync` (a single Redis >= 7.2 with AOF on): every write is
    acknowledged only once the store's AOF has it on disk (see _durability).
    """
    common: dict[str, Any] = {
        "retry": Retry(NoBackoff(), 0),
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": 2.0,
        "health_check_interval": 0,
    }
    if cluster is None:
        probe = Redis.from_url(url, **common)
        try:
            info = await probe.info("cluster")
        finally:
            await probe.aclose()
        cluster = info.get("cluster_enabled") == 1
    if cluster:
        # StoreCluster: redis-py's cluster client with redirects that survive
        # a slot migration (see _cluster_client).
        return StoreCluster.from_url(url, max_connections=max_connections, **common)
    # The cluster client builds its own connections; only a single Redis gets
    # the batch encoder (the script calls are the same either way). A rediss://
    # or unix:// URL's own connection class takes precedence in from_url (its
    # parse_url result overrides the keyword), so it is swapped below.
    kind = DurableRedis if wait_for_fsync else StoreRedis
    client = kind.from_url(
        url, max_connections=max_connections, connection_class=BatchEncodingConnection, **common
    )
    if isinstance(client, DurableRedis):
        client.with_waits(Waits())  # its own state: see _durability.Waits
    # from_url picks the class of a unix:// URL (the embedded store's) or a rediss://
    # one (TLS, its ssl_* query parameters kept in the pool's connection kwargs) itself.
    if client.connection_pool.connection_class is UnixDomainSocketConnection:
        client.connection_pool.connection_class = BatchEncodingUnixConnection
    elif client.connection_pool.connection_class is SSLConnection:
        client.connection_pool.connection_class = BatchEncodingSSLConnection
    return client
