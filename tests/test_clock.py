"""StoreClock: the store's clock (Redis TIME) read without I/O, whatever this machine's says."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis.asyncio as redis_asyncio

from packetbus_server import _clock
from packetbus_server._clock import Sample, StoreClock

SECOND_NS = 1_000_000_000


class FakeStore:
    """A TIME source and a monotonic clock under the test's control: each read takes
    `rtt_ns` (its reply is read half way through) and answers monotonic + `offset_ns`."""

    def __init__(self, offset_ns: int, rtt_ns: int) -> None:
        self.mono_ns = 1_000 * SECOND_NS
        self.offset_ns = offset_ns
        self.rtt_ns = rtt_ns
        self.failing = False

    def monotonic_ns(self) -> int:
        return self.mono_ns

    async def time(self) -> Any:
        if self.failing:
            raise ConnectionError("store away")
        self.mono_ns += self.rtt_ns // 2
        store_ns = self.mono_ns + self.offset_ns
        self.mono_ns += self.rtt_ns - self.rtt_ns // 2
        return [store_ns // SECOND_NS, store_ns % SECOND_NS // 1_000]


async def never_read() -> Any:
    raise AssertionError("this clock is not meant to read the store")


def clock_of(store: FakeStore, **kwargs: Any) -> StoreClock:
    return StoreClock(store.time, monotonic_ns=store.monotonic_ns, **kwargs)


async def test_the_offset_is_learnt_at_the_midpoint_of_the_round_trip() -> None:
    store = FakeStore(offset_ns=1_700_000_000 * SECOND_NS, rtt_ns=4_000_000)
    clock = clock_of(store)
    assert not clock.synced
    sample = await clock.sync()
    assert clock.synced
    assert sample.rtt_ns == 4_000_000
    assert clock.error_bound_ns == 2_000_000
    # TIME has microseconds: exact to the microsecond.
    assert abs(clock.now_ns() - (store.mono_ns + store.offset_ns)) < 1_000
    store.mono_ns += 5 * SECOND_NS  # no I/O: the monotonic clock carries it
    assert abs(clock.now_ns() - (store.mono_ns + store.offset_ns)) < 1_000
    assert clock.now_ms() == clock.now_ns() // 1_000_000


async def test_the_shortest_round_trip_of_the_recent_samples_wins() -> None:
    clock = StoreClock(never_read)  # samples are given
    clock.add(Sample(offset_ns=5_000_000, rtt_ns=10_000_000))
    clock.add(Sample(offset_ns=1_000_000, rtt_ns=1_000_000))
    clock.add(Sample(offset_ns=9_000_000, rtt_ns=20_000_000))
    assert clock.error_bound_ns == 500_000
    # The best sample, not the latest or an average.
    assert clock.now_ns() - time.monotonic_ns() in range(900_000, 1_100_000)
    # Only the last 8 count: the best one ages out.
    for _ in range(8):
        clock.add(Sample(offset_ns=3_000_000, rtt_ns=2_000_000))
    assert clock.error_bound_ns == 1_000_000


async def test_a_store_clock_that_jumps_is_followed_at_once() -> None:
    store = FakeStore(offset_ns=0, rtt_ns=1_000_000)
    clock = clock_of(store)
    await clock.sync()
    # A failover to a node 30 s off (or a stepped clock), read with a worse round trip:
    # the old, better samples would otherwise win for 8 more readings.
    store.offset_ns, store.rtt_ns = 30 * SECOND_NS, 5_000_000
    await clock.sync()
    assert abs(clock.now_ns() - (store.mono_ns + store.offset_ns)) < 1_000


async def test_a_cluster_reply_per_node_is_read() -> None:
    async def per_node() -> Any:
        return {"127.0.0.1:7000": [1_700_000_000, 250_000]}

    clock = StoreClock(per_node)
    await clock.sync()
    assert abs(clock.now_ms() - 1_700_000_000_250) < 1_000


def test_an_unsynced_clock_is_this_machines() -> None:
    clock = StoreClock(never_read)
    assert abs(clock.now_ns() - time.time_ns()) < SECOND_NS


async def test_the_clock_refreshes_in_the_background_and_keeps_its_offset_when_the_store_is_away() -> (
    None
):
    store = FakeStore(offset_ns=7 * SECOND_NS, rtt_ns=1_000_000)
    reads = 0

    async def counted() -> Any:
        nonlocal reads
        reads += 1
        return await store.time()

    clock = StoreClock(counted, refresh_seconds=0.01, monotonic_ns=store.monotonic_ns)
    await clock.sync()
    clock.start()
    await asyncio.sleep(0.2)
    assert reads > 3
    store.failing = True
    await asyncio.sleep(0.05)
    assert abs(clock.now_ns() - (store.mono_ns + store.offset_ns)) < 1_000
    await clock.stop()
    store.failing = False
    stopped_at = reads
    await asyncio.sleep(0.05)
    assert reads == stopped_at


async def test_it_agrees_with_a_real_store_whatever_this_machines_clock_says(
    raw_redis: redis_asyncio.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_time_ns = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real_time_ns() + 60 * SECOND_NS)
    monkeypatch.setattr(time, "time", lambda: real_time_ns() / 1e9 + 60)
    clock = StoreClock(raw_redis.time)
    await clock.sync()
    seconds, micros = await raw_redis.time()
    store_ms = seconds * 1000 + micros // 1000
    # Read after TIME answered: at most the round trips (and a busy machine) later.
    assert -5 <= clock.now_ms() - store_ms < 200


async def test_after_a_failed_reading_the_store_is_read_again_soon(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_clock, "_RETRY_SECONDS", 0.01)
    store = FakeStore(offset_ns=0, rtt_ns=1_000_000)
    reads = 0

    async def counted() -> Any:
        nonlocal reads
        reads += 1
        return await store.time()

    clock = StoreClock(counted, refresh_seconds=0.2, monotonic_ns=store.monotonic_ns)
    await clock.sync()
    store.failing = True
    clock.start()
    try:
        await asyncio.sleep(0.4)
        # One reading per 0.2 s would be 2; after the first failure, every 0.01 s.
        assert reads > 6
        # Back, with another clock (a failover): learnt at its first answer.
        store.failing, store.offset_ns = False, 90 * SECOND_NS
        await asyncio.sleep(0.1)
        assert abs(clock.now_ns() - (store.mono_ns + store.offset_ns)) < 1_000
    finally:
        await clock.stop()
