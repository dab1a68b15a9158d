"""The store a server runs on: the embedded Valkey or the configured one, connected,
probed (durability, eviction policy, clock) before anything is served."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from redis.asyncio.cluster import RedisCluster

from ._clock import StoreClock
from ._embedded import EmbeddedValkey
from ._eviction import EvictionGuard, require_noeviction
from ._redis_connect import connect_redis
from ._retry import with_retries
from ._running import blocking_reads, check_durability
from ._scripts import RedisClient
from ._server_config import ServerConfig
from ._store import PacketStore
from ._waits import SharedReads


def start_budget(config: ServerConfig) -> float:
    """Seconds each step of a start may retry the store: config.store_start_seconds,
    at least config.retry_budget_seconds."""
    return max(config.retry_budget_seconds, config.store_start_seconds)


@dataclass(frozen=True)
class StoreConnection:
    """The connected store, and what start built on it."""

    # None: an external store (redis_url).
    embedded: EmbeddedValkey | None
    redis_url: str
    redis: RedisClient
    guard: EvictionGuard
    reads: SharedReads
    store: PacketStore
    clock: StoreClock


async def connect_store(config: ServerConfig, undo: contextlib.AsyncExitStack) -> StoreConnection:
    """Start the embedded store (config.redis_url None) or reach the configured one,
    check its durability and eviction policy and learn its clock; each step's undo
    is pushed on `undo`. Raises what the store's refusals raise (see _eviction,
    _durability), and StoreUnavailableError once each step's retries run out
    (start_budget)."""
    budget = start_budget(config)
    embedded: EmbeddedValkey | None = None
    redis_url = config.redis_url
    if redis_url is None:
        embedded = EmbeddedValkey(config.data_dir, config.durability)
        await asyncio.to_thread(embedded.start)
        undo.push_async_callback(asyncio.to_thread, embedded.stop)
        embedded.keep_running()
        undo.push_async_callback(embedded.stop_keeping)
        redis_url = embedded.url
    # The embedded store fsyncs as asked; an external one is asked how it does.
    # Both first calls retry like any other: a store that is restarting while this
    # process starts (a worker started as its supervisor restarts the embedded
    # store) is the same transient state as one call's lost connection.
    url = redis_url
    wait_fsync = embedded is None and await with_retries(
        lambda: check_durability(url, config.durability),
        budget_seconds=budget,
    )
    redis = await with_retries(
        lambda: connect_redis(
            url, max_connections=config.max_redis_connections, wait_for_fsync=wait_fsync
        ),
        budget_seconds=budget,
    )
    undo.push_async_callback(redis.aclose)
    # A store that may evict: no start (retried like any read: a connection
    # cut now is no answer).
    guard = EvictionGuard(redis, allow_eviction=config.allow_store_eviction)
    if not config.allow_store_eviction:
        await with_retries(lambda: require_noeviction(redis), budget_seconds=budget)
    await with_retries(guard.check, budget_seconds=budget)
    reads = await blocking_reads(
        config, redis_url, cluster=isinstance(redis, RedisCluster), wait_for_fsync=wait_fsync
    )
    undo.push_async_callback(reads.redis.aclose)
    store = PacketStore(
        redis,
        retention_ms=config.limits.max_ttl_seconds * 1000,
        retry_budget=config.retry_budget_seconds,
        reads=reads,
    )
    undo.push_async_callback(store.close)
    # Every decision about time follows the store's clock (see _clock): learn it
    # before anything is judged, then keep it fresh.
    clock = store.clock
    await with_retries(clock.sync, budget_seconds=budget)
    clock.start()
    return StoreConnection(embedded, redis_url, redis, guard, reads, store, clock)
