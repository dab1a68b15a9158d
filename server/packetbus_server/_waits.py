"""Blocking stream reads (XREAD BLOCK) for every waiting stream, apart from other calls.

Every idle Subscribe, Pull and Watch* stream waits for news in a blocking XREAD,
which holds a Redis connection for as long as it blocks. Those reads go through
a client of their own (`connect_redis` with its own pool, sized by the stream
caps), so waiting streams can never take the connections unary calls and
health checks need. Identical waits (same keys, same cursors: e.g. every
idle watcher of one task queue) share one read, so a thousand idle watchers of
one key hold one connection, not a thousand. `SharedCalls` is that sharing for any
call (the store also shares identical Subscribe page reads through it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

from ._scripts import RedisClient

_Key = tuple[tuple[tuple[str, str], ...], int]
K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class SharedCalls(Generic[K, T]):
    """One call under way per key: a caller asking for a key whose call is under way
    awaits that call's outcome instead of making its own. The call runs as a task
    of its own, so one caller cancelled does not cancel it for the others; it is
    cancelled once nobody waits for it any more."""

    def __init__(self) -> None:
        self._calls: dict[K, tuple[asyncio.Task[T], list[int]]] = {}

    async def run(self, key: K, call: Callable[[], Awaitable[T]]) -> T:
        """`call()`'s outcome, or that of the call under way for `key`. Raises what it raises."""
        found = self._calls.get(key)
        if found is None or found[0].done():
            task = asyncio.ensure_future(call())
            task.add_done_callback(retrieve_outcome)
            found = (task, [0])
            self._calls[key] = found
        task, waiting = found
        waiting[0] += 1
        try:
            return await asyncio.shield(task)
        finally:
            waiting[0] -= 1
            if waiting[0] == 0:
                if self._calls.get(key) is found:
                    del self._calls[key]
                # Nobody waits for it any more: a blocking read gives its
                # connection back now, not when its block runs out.
                task.cancel()

    def under_way(self) -> int:
        """Distinct calls under way."""
        return sum(1 for task, _ in self._calls.values() if not task.done())


class SharedReads:
    """XREAD BLOCK on `redis`, one read for all the callers waiting on the same thing."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis
        self._reads: SharedCalls[_Key, Any] = SharedCalls()

    @property
    def redis(self) -> RedisClient:
        return self._redis

    async def xread(
        self, streams: dict[str, str], *, count: int, block_ms: int, shared: bool = True
    ) -> Any:
        """The XREAD reply for `streams` (key -> read after this id), waiting up to
        `block_ms` (a caller that joins a read already under way may return
        sooner: callers look again anyway). Raises what the read raises.

        `shared=False`: a read of its own. Consumers of one group compete for
        what a read announces; waking them all at once would hand every lease
        that runs out to whichever of them looks first.
        """
        if not shared or "$" in streams.values():
            # "From now" differs for each caller: such a read is not shared.
            return await self._read(streams, count, block_ms)
        key: _Key = (tuple(sorted(streams.items())), count)
        return await self._reads.run(key, lambda: self._read(streams, count, block_ms))

    async def _read(self, streams: dict[str, str], count: int, block_ms: int) -> Any:
        ids: dict[Any, Any] = dict(streams)
        return await self._redis.xread(ids, count=count, block=block_ms)

    def reads_under_way(self) -> int:
        """Distinct blocking reads under way (each holds one connection)."""
        return self._reads.under_way()


def retrieve_outcome(task: asyncio.Future[Any]) -> None:
    """A done callback for a task whose failure is seen (or not needed) elsewhere:
    marks its exception retrieved, so asyncio never reports "Task exception was
    never retrieved" for a task that ended while nobody awaited it (a stream's
    wait that failed as the stream ended)."""
    if not task.cancelled():
        with contextlib.suppress(BaseException):
            task.exception()
