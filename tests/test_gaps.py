"""Gap signals: a subscription is told of packets it can no longer deliver, never skips them.

Trimming runs through the real dispatch script on a server whose retention (its
max TTL) is two seconds; whole-log and per-packet expiry use one-second TTLs.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis_asyncio

import packetbus
from packetbus.v1 import packet_service_pb2
from packetbus_server import Limits, ServerConfig, start
from packetbus_server._gaps import Follower
from packetbus_server._log_pages import FollowPage, Horizon, LogEntry
from tests.conftest import new_packet

TRIMMED = packet_service_pb2.GAP_REASON_TRIMMED
EXPIRED = packet_service_pb2.GAP_REASON_EXPIRED
RETENTION_S = 2
PACKETBUS = Path(sys.executable).parent / "packetbus"


def gap(
    last: str, resume_after: str, reason: int, missed: int = 0
) -> packet_service_pb2.SubscriptionGap:
    return packet_service_pb2.SubscriptionGap(
        last_cursor=last,
        resume_after_cursor=resume_after,
        missed_packets=missed,
        reason=reason,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
async def short_retention(redis_url: str) -> AsyncIterator[packetbus.Client]:
    """A client of a server that trims its logs to the last RETENTION_S seconds."""
    limits = Limits(max_ttl_seconds=RETENTION_S, default_ttl_seconds=RETENTION_S)
    srv = await start(ServerConfig(listen="127.0.0.1:0", redis_url=redis_url, limits=limits))
    try:
        async with await packetbus.Client.connect(f"127.0.0.1:{srv.port}") as client:
            yield client
    finally:
        await srv.stop(grace=0)


async def dispatch(client: packetbus.Client, topic: str, n: int, ttl: int = 0) -> list[str]:
    """Store n packets in one call; their cursors."""
    results = await client.dispatch_batch([new_packet(topic, ttl_seconds=ttl) for _ in range(n)])
    assert all(r.WhichOneof("outcome") == "receipt" for r in results)
    return [r.receipt.cursor for r in results]


async def expired_between(client: packetbus.Client, topic: str) -> tuple[str, list[str], list[str]]:
    """An anchor packet, 3 that have expired (1 s TTL, waited out) and 2 that live on:
    their cursors."""
    [anchor] = await dispatch(client, topic, 1)
    short = await dispatch(client, topic, 3, ttl=1)
    long = await dispatch(client, topic, 2)
    await asyncio.sleep(1.2)
    return anchor, short, long


async def collect(subscription: packetbus.Subscription, n: int) -> list[packetbus.StoredPacket]:
    got: list[packetbus.StoredPacket] = []
    async with asyncio.timeout(10):
        async for stored in subscription:
            got.append(stored)
            if len(got) == n:
                break
    return got


async def read_with_gaps(
    client: packetbus.Client, topic: str, n: int, **start: object
) -> tuple[list[packet_service_pb2.SubscriptionGap], list[str]]:
    """The gaps and the cursors of the first n packets a subscription gets."""
    gaps: list[packet_service_pb2.SubscriptionGap] = []
    async with client.subscribe(topic, on_gap=gaps.append, **start) as subscription:  # type: ignore[arg-type]
        got = await collect(subscription, n)
    return gaps, [s.receipt.cursor for s in got]


async def expire_whole_log(client: packetbus.Client, topic: str) -> tuple[str, list[str]]:
    """A topic whose log expired as a whole: the first packet's cursor, and the others'."""
    [first, *rest] = await dispatch(client, topic, 3, ttl=1)
    await asyncio.sleep(1.2)
    return first, rest


async def requeue(raw_redis: redis_asyncio.Redis, topic: str, cursor: str) -> str:
    """Append the packet at `cursor` again for one consumer group, as carcel_requeue.lua does."""
    log = f"pb:{{{topic}}}:log"
    found: Any = await raw_redis.xrange(log, cursor, cursor)
    [(_, fields)] = found
    added: Any = await raw_redis.xadd(log, {**fields, b"g": b"workers"})
    return str(added.decode())


async def trim(
    client: packetbus.Client, topic: str, raw_redis: redis_asyncio.Redis | None = None
) -> tuple[list[str], list[str]]:
    """Packets stored, then trimmed by retention: their cursors, and those of the packets the
    log still holds. One packet stored in between keeps the log alive, so it is trimmed, not
    expired as a whole. With `raw_redis`, a requeue for a consumer group follows the old
    packets and is trimmed with them."""
    old = await dispatch(client, topic, 4)
    if raw_redis is not None:
        await requeue(raw_redis, topic, old[0])
    await asyncio.sleep(RETENTION_S / 2)
    keeper = await dispatch(client, topic, 1)
    await asyncio.sleep(RETENTION_S / 2 + 0.1)
    retained = keeper + await dispatch(client, topic, 2)  # this dispatch trims
    return old, retained


async def test_a_resume_cursor_behind_retention_gets_one_trimmed_gap_then_the_retained_packets(
    short_retention: packetbus.Client, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    old, retained = await trim(short_retention, topic)

    # Trimmed exactly, and recorded: the newest entry that went is the horizon's.
    log: Any = await raw_redis.xrange(f"pb:{{{topic}}}:log")
    assert [i.decode() for i, _ in log] == retained
    assert await raw_redis.hget(f"pb:{{{topic}}}:horizon", "t") == old[-1].encode()

    gaps, got = await read_with_gaps(short_retention, topic, 3, after=old[0])
    assert gaps == [gap(old[0], old[-1], TRIMMED)]
    assert got == retained

    # A cursor that was itself trimmed, with nothing newer trimmed after it: no gap.
    gaps, got = await read_with_gaps(short_retention, topic, 3, after=old[-1])
    assert (gaps, got) == ([], retained)


async def test_a_trimmed_requeue_is_not_a_gap(
    short_retention: packetbus.Client, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    old, retained = await trim(short_retention, topic, raw_redis)

    # The horizon names the newest publication trimmed, not the newer requeue.
    assert await raw_redis.hget(f"pb:{{{topic}}}:horizon", "t") == old[-1].encode()
    gaps, got = await read_with_gaps(short_retention, topic, 3, after=old[-1])
    assert (gaps, got) == ([], retained)


async def test_earliest_is_not_told_of_what_was_trimmed_before_it_started(
    short_retention: packetbus.Client, topic: str
) -> None:
    _, retained = await trim(short_retention, topic)

    # No on_gap: a gap would raise.
    async with short_retention.subscribe(topic, start=packetbus.EARLIEST) as subscription:
        got = await collect(subscription, 3)
    assert [s.receipt.cursor for s in got] == retained


async def test_a_whole_expired_log_is_a_gap_by_default_data_loss_and_iteration_continues(
    client: packetbus.Client, topic: str
) -> None:
    first, rest = await expire_whole_log(client, topic)

    async with client.subscribe(topic, after=first) as subscription:
        with pytest.raises(packetbus.SubscriptionGapError) as caught:
            async with asyncio.timeout(10):
                await anext(subscription)
        assert caught.value.code == grpc.StatusCode.DATA_LOSS
        assert caught.value.gap == gap(first, rest[-1], EXPIRED)
        assert first in caught.value.message
        assert rest[-1] in caught.value.message
        assert subscription.cursor == rest[-1]

        [fresh] = await dispatch(client, topic, 1)
        [after_gap] = await collect(subscription, 1)
    assert after_gap.receipt.cursor == fresh


async def test_a_log_that_expired_and_was_written_again_still_reports_the_gap(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    first, rest = await expire_whole_log(client, topic)
    fresh = await dispatch(client, topic, 2)
    assert await raw_redis.hget(f"pb:{{{topic}}}:horizon", "x") == rest[-1].encode()

    gaps, got = await read_with_gaps(client, topic, 2, after=first)
    assert gaps == [gap(first, rest[-1], EXPIRED)]
    assert got == fresh

    # Starting from a position instead: nothing to report.
    for position in (packetbus.EARLIEST, packetbus.LATEST):
        subscription = client.subscribe(topic, start=position)
        reader = asyncio.create_task(collect(subscription, 1))
        # LATEST is pinned when the stream opens: packets go out until it yields one.
        newer: list[str] = []
        async with asyncio.timeout(20):
            while not reader.done():
                newer += await dispatch(client, topic, 1)
                await asyncio.wait({reader}, timeout=0.1)
        got_one = reader.result()
        await subscription.close()
        assert len(got_one) == 1
        if position == packetbus.EARLIEST:
            assert got_one[0].receipt.cursor == fresh[0]
        else:
            assert got_one[0].receipt.cursor in newer


async def test_packets_expired_on_read_are_one_counted_gap(
    client: packetbus.Client, topic: str
) -> None:
    anchor, short, long = await expired_between(client, topic)

    # One packet per read: the gap spans reads and is still announced once.
    gaps, got = await read_with_gaps(client, topic, 2, after=anchor, max_batch_packets=1)
    assert gaps == [gap(anchor, short[-1], EXPIRED, missed=3)]
    assert got == long

    # EARLIEST asked for what the topic holds: expired packets are not news to it.
    gaps, got = await read_with_gaps(client, topic, 3, start=packetbus.EARLIEST)
    assert (gaps, got) == ([], [anchor, *long])


async def test_requeues_for_a_consumer_group_are_neither_packets_nor_gaps(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    cursors = await dispatch(client, topic, 2)
    await requeue(raw_redis, topic, cursors[0])
    [later] = await dispatch(client, topic, 1)

    gaps, got = await read_with_gaps(client, topic, 3, start=packetbus.EARLIEST)
    assert (gaps, got) == ([], [*cursors, later])


async def test_sync_client_raises_the_gap_and_keeps_iterating(target: str, topic: str) -> None:
    async with await packetbus.Client.connect(target) as client:
        first, rest = await expire_whole_log(client, topic)
        fresh = await dispatch(client, topic, 1)

    def use_sync_client() -> tuple[packet_service_pb2.SubscriptionGap, str]:
        with (
            packetbus.SyncClient.connect(target) as sync,
            sync.subscribe(topic, after=first) as stream,
        ):
            with pytest.raises(packetbus.SubscriptionGapError) as caught:
                next(stream)
            return caught.value.gap, next(stream).receipt.cursor

    told, after_gap = await asyncio.to_thread(use_sync_client)
    assert told == gap(first, rest[-1], EXPIRED)
    assert after_gap == fresh[0]


async def test_cli_tail_prints_the_gap_and_continues(target: str, topic: str) -> None:
    async with await packetbus.Client.connect(target) as client:
        first, rest = await expire_whole_log(client, topic)
        fresh = await dispatch(client, topic, 1)

    tail = await asyncio.create_subprocess_exec(
        str(PACKETBUS),
        "--target",
        target,
        "tail",
        topic,
        "--after",
        first,
        "--count",
        "1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await tail.communicate()
    assert tail.returncode == 0, err.decode()
    gap_line, packet_line = out.decode().splitlines()
    assert gap_line == (
        f'{{"gap":{{"lastCursor":"{first}","resumeAfterCursor":"{rest[-1]}",'
        f'"reason":"GAP_REASON_EXPIRED"}}}}'
    )
    assert f'"cursor":"{fresh[0]}"' in packet_line
    [warning] = err.decode().splitlines()
    assert warning.startswith("packetbus: warning: subscription gap:")
    assert rest[-1] in warning


# -- the rule itself, on pages as the store reads them -------------------------------------


def entry(cursor: str, expires_at_ms: int = 10_000) -> LogEntry:
    return LogEntry(cursor, expires_at_ms, b"", 0)


def page(
    *entries: LogEntry, trimmed: str = "", expired: str = "", complete: bool = True
) -> FollowPage:
    last = entries[-1].cursor if entries else None
    return FollowPage(list(entries), last, complete, Horizon(trimmed, expired, known=True))


def test_a_follower_tells_of_entries_trimmed_between_its_reads() -> None:
    follower = Follower("0-0", resumed=False, started_ms=1_000)
    [(none, first)] = follower.take(page(entry("5-0"), complete=False), now_ms=1_000)
    assert (none, [e.cursor for e in first]) == (None, ["5-0"])

    # Retention overtook the reader: 6-0 .. 9-0 went before it read them.
    [(told, rest)] = follower.take(page(entry("10-0"), trimmed="9-0"), now_ms=1_000)
    assert told == gap("5-0", "9-0", TRIMMED)
    assert [e.cursor for e in rest] == ["10-0"]
    assert follower.cursor == "10-0"


def test_a_follower_tells_of_entries_that_expired_before_it_read_them() -> None:
    follower = Follower("0-0", resumed=False, started_ms=1_000)
    stale = entry("3-0", expires_at_ms=2_000)  # expired after the subscription started
    segments = follower.take(page(entry("2-0"), stale, entry("4-0")), now_ms=3_000)
    assert [(g, [e.cursor for e in es]) for g, es in segments] == [
        (None, ["2-0"]),
        (gap("2-0", "3-0", EXPIRED, missed=1), ["4-0"]),
    ]


def test_a_gap_at_the_end_of_the_log_is_told_at_once_and_only_once() -> None:
    follower = Follower("1-0", resumed=True, started_ms=0)
    [(told, none)] = follower.take(page(expired="7-0"), now_ms=1)
    assert (told, none) == (gap("1-0", "7-0", EXPIRED), [])
    assert follower.cursor == "7-0"
    assert follower.take(page(expired="7-0"), now_ms=1) == []


async def test_subscribers_sharing_pages_each_get_their_own_gaps(
    client: packetbus.Client, topic: str
) -> None:
    anchor, short, long = await expired_between(client, topic)
    # Resumed after "0-0" and EARLIEST read the same pages (from "0-0", and on after
    # each packet), as do the ones resumed after the same cursor; their gaps differ.
    starts: list[dict[str, object]] = [
        {"after": "0-0"},
        {"start": packetbus.EARLIEST},
        {"after": anchor},
        {"after": short[-1]},
        {"after": "0-0", "max_batch_packets": 1},
        {"start": packetbus.EARLIEST, "max_batch_packets": 1},
    ] * 3
    expected = [
        ([gap(anchor, short[-1], EXPIRED, missed=3)], [anchor, *long]),
        ([], [anchor, *long]),
        ([gap(anchor, short[-1], EXPIRED, missed=3)], long),
        ([], long),
        ([gap(anchor, short[-1], EXPIRED, missed=3)], [anchor, *long]),
        ([], [anchor, *long]),
    ] * 3
    got = await asyncio.gather(
        *(
            read_with_gaps(client, topic, len(want[1]), **start)
            for start, want in zip(starts, expected, strict=True)
        )
    )
    assert [(g, c) for g, c in got] == expected


async def test_subscribers_sharing_pages_each_get_their_own_trimmed_gap(
    short_retention: packetbus.Client, topic: str
) -> None:
    old, retained = await trim(short_retention, topic)
    # From "0-0" a resumed subscriber and an EARLIEST one read the same pages: only the
    # resumed one was told nothing of the trim; the ones resumed after old[0] share theirs.
    starts: list[dict[str, object]] = [
        {"after": "0-0"},
        {"start": packetbus.EARLIEST},
        {"after": old[0]},
        {"after": old[-1]},
        {"after": old[0], "max_batch_packets": 1},
        {"start": packetbus.EARLIEST, "max_batch_packets": 1},
    ] * 3
    expected = [
        ([gap("0-0", old[-1], TRIMMED)], retained),
        ([], retained),
        ([gap(old[0], old[-1], TRIMMED)], retained),
        ([], retained),
        ([gap(old[0], old[-1], TRIMMED)], retained),
        ([], retained),
    ] * 3
    got = await asyncio.gather(
        *(read_with_gaps(short_retention, topic, len(retained), **start) for start in starts)
    )
    assert [(g, c) for g, c in got] == expected
