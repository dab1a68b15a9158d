"""The store's clock: one time source for every replica, whatever its own clock says.

Leases, TTLs, heartbeats and retention are written by Lua scripts with Redis's
clock (``redis.call('TIME')``). A replica that judged them with its own wall
clock would disagree with every other replica as far as its clock is off: a
replica 60 s ahead would call a heartbeating agent stale and a live packet
expired. So every decision the server makes in Python about such a time reads
`StoreClock.now_ms`, which is Redis's clock as learnt from ``TIME``.

Reading ``TIME`` per decision would cost a round trip per call; instead the
clock learns the offset between this process's monotonic clock and ``TIME``
(the reply is taken to be read half way through the round trip, so the error is
at most half the round trip) and answers ``monotonic + offset``: no I/O per
call, and immune to this machine's wall clock being set or stepped. The offset
is refreshed every `refresh_seconds`; after a reading fails, every half second
until one succeeds, so a restarted or failed-over store with another clock is
learnt at its first answer. Of the recent samples the one with the shortest
round trip wins, as NTP does. On a Redis Cluster any node's clock
will do: the scripts run on every node and their clocks are kept by NTP.

Decisions made inside a Lua script read ``TIME`` there; this clock is for the
decisions and stamps made in Python (README, "How it works": one clock).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from packetbus._stopping import cancel_and_wait

log = logging.getLogger(__name__)

# How many recent samples the offset is chosen from (the shortest round trip wins).
_SAMPLES = 8
# A jump of the store's clock larger than this between two samples (a failover
# to a node with another clock, a stepped clock) forgets the older samples.
_STEP_MS = 1_000
# How soon a reading that failed is tried again.
_RETRY_SECONDS = 0.5

TimeSource = Callable[[], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of the store's clock: `offset_ns` = store time - local monotonic time
    at the reading's midpoint, `rtt_ns` the round trip it took (its error is at most half)."""

    offset_ns: int
    rtt_ns: int


def _store_ns(reply: Any) -> int:
    """``TIME``'s reply ([seconds, microseconds]; a cluster client may answer a
    {node: reply} mapping) in unix nanoseconds."""
    if isinstance(reply, dict):
        reply = next(iter(reply.values()))
    seconds, micros = reply
    return int(seconds) * 1_000_000_000 + int(micros) * 1_000


class StoreClock:
    """Redis's clock, read without I/O: `now_ms`/`now_ns` in unix time.

    `read_time` is an async callable answering Redis ``TIME`` (e.g. ``redis.time``).
    Call `sync` once before serving (it raises what the store raises when it cannot
    be read), then `start` to keep the offset fresh; `stop` ends that.
    """

    def __init__(
        self,
        read_time: TimeSource,
        *,
        refresh_seconds: float = 5.0,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._read_time = read_time
        self._refresh = refresh_seconds
        self._monotonic_ns = monotonic_ns
        self._samples: deque[Sample] = deque(maxlen=_SAMPLES)
        self._offset_ns: int | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def synced(self) -> bool:
        return self._offset_ns is not None

    @property
    def error_bound_ns(self) -> int:
        """At most how far `now_ns` may be from the store's clock (half the best round trip)."""
        return min((s.rtt_ns for s in self._samples), default=0) // 2

    def now_ns(self) -> int:
        """The store's clock now, unix ns. Before the first `sync`: this machine's clock."""
        if self._offset_ns is None:
            return time.time_ns()
        return self._monotonic_ns() + self._offset_ns

    def now_ms(self) -> int:
        """The store's clock now, unix ms."""
        return self.now_ns() // 1_000_000

    def add(self, sample: Sample) -> None:
        """Take one reading into account (a reading far off the current offset means the
        store's clock moved: the older readings no longer count)."""
        if self._offset_ns is not None and abs(sample.offset_ns - self._offset_ns) > (
            _STEP_MS * 1_000_000 + sample.rtt_ns
        ):
            log.warning(
                "the store's clock moved by %d ms; following it",
                (sample.offset_ns - self._offset_ns) // 1_000_000,
            )
            self._samples.clear()
        self._samples.append(sample)
        self._offset_ns = min(self._samples, key=lambda s: s.rtt_ns).offset_ns

    async def sync(self) -> Sample:
        """Read the store's clock once and learn from it; returns the reading."""
        before = self._monotonic_ns()
        reply = await self._read_time()
        after = self._monotonic_ns()
        sample = Sample(_store_ns(reply) - (before + after) // 2, after - before)
        self.add(sample)
        return sample

    async def _run(self) -> None:
        delay = self._refresh
        while True:
            await asyncio.sleep(delay)
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is away: keep the offset learnt so far
                log.debug("could not read the store's clock: %s", exc)
                # Read it again soon: a store that comes back (a restart, a failover to
                # a node with another clock) is learnt at its first answer.
                delay = min(self._refresh, _RETRY_SECONDS)
            else:
                delay = self._refresh

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="packetbus-store-clock")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None


def local_clock() -> StoreClock:
    """A clock that is this machine's own (never synced): for tools and tests that
    run without a store."""
    return StoreClock(_no_store)


async def _no_store() -> Any:  # pragma: no cover - local_clock is never synced
    raise RuntimeError("this clock has no store")
