"""The packet store: every Redis read and write of a topic's packets, retried where safe.

A dispatch costs one Lua script call per topic in the batch (run in parallel),
whatever the number of packets. Each tracking id is also claimed for its topic
(``pb:loc:{tid}``) so it can be found by id and cannot be reused on another
topic, nor take an id a task, finding or record holds (``pb:place:{tid}``): on a
single Redis inside the same script; on a Redis Cluster, where those keys live in
other slots, by one pipeline just before (_cluster_claims). Every step is
idempotent, so a whole dispatch can be replayed after any failure and stores
nothing twice.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster

from packetbus import _wire

from . import _batch_refs, _keys, _scripts
from ._clock import StoreClock
from ._cluster_claims import PLACED_BUT_OURS, claim_tracking_ids, records_exist
from ._cursors import newest_cursor
from ._log_pages import (
    FollowPage,
    FoundPacket,
    LogEntry,
    LogPage,
    entry_fields,
    follow_horizon,
    location_topic,
    publications,
    unexpired_page,
)
from ._packet_writes import OUTCOMES, Outcome, PacketWrite, WriteResult, dispatch_argument
from ._replies import text
from ._retry import with_retries
from ._scripts import RedisClient
from ._waits import SharedCalls, SharedReads

# One script call blocks Redis while it runs; bigger batches are split so no
# single call holds the server for long.
_MAX_PACKETS_PER_SCRIPT = 500
_NOTE_EVERY = 60.0
_MAX_NOTED = 100_000


class PacketStore:
    def __init__(
        self,
        redis: RedisClient,
        *,
        retention_ms: int,
        retry_budget: float,
        reads: SharedReads | None = None,
        clock: StoreClock | None = None,
        expander: _batch_refs.Expander | None = None,
    ) -> None:
        self._redis = redis
        # The store's clock (see _clock): every replica judges TTLs by it.
        self.clock = clock or StoreClock(redis.time)
        # Blocking reads: on a pool of their own when given (see _waits).
        self._reads = reads or SharedReads(redis)
        # Identical page reads under way (every live subscriber of a topic, woken by
        # one XREAD, reads the same page): one script call and one expansion.
        self._pages: SharedCalls[tuple[str, str, int, int], FollowPage] = SharedCalls()
        self._cluster = isinstance(redis, RedisCluster)
        self._noted: dict[tuple[str, str], float] = {}
        self._retention_ms = retention_ms
        self._retry_budget = retry_budget
        # Shared with the server's other readers (`expander`): one cache of decoded
        # batches, each batch decoded and its proofs built once per server.
        self._expander = expander or _batch_refs.Expander(redis)

    async def _expanded(self, topic: str, entries: list[LogEntry]) -> list[LogEntry]:
        # Stored-once entries get the server's ingest entries back (_batch_refs), in
        # place: the entries are this read's own.
        if not any(e.ref for e in entries):
            return entries
        payloads = await self._expander.expand(
            topic, [(e.payload, e.content_length, e.tracking_id, e.ref) for e in entries]
        )
        for e, p in zip(entries, payloads, strict=True):
            e.payload, e.ref, e.tracking_id = p, b"", b""
        return entries

    @property
    def expander(self) -> _batch_refs.Expander:
        return self._expander

    @property
    def redis(self) -> RedisClient:
        return self._redis

    def _budget(self, time_remaining: float | None) -> float:
        if time_remaining is None:
            return self._retry_budget
        return max(0.0, min(self._retry_budget, time_remaining))

    async def ping(self, timeout: float) -> bool:
        """Whether Redis (on a cluster: every primary) answers PING within `timeout`
        seconds. What a retry can fix (a redirect, a connection cut while the
        cluster's map is reloaded) is retried within `timeout`."""
        redis = self._redis
        if isinstance(redis, RedisCluster):
            # redis-py sends a bare PING to one node only (its default node): a
            # primary down, its slots unserved, would still read as SERVING.
            def ping() -> Awaitable[Any]:
                return redis.ping(target_nodes=RedisCluster.PRIMARIES)
        else:
            ping = redis.ping
        try:
            return bool(await with_retries(ping, budget_seconds=timeout))
        except Exception:
            return False

    async def close(self) -> None:
        await self.clock.stop()
        await self._redis.aclose()

    async def write(
        self, writes: Sequence[PacketWrite], *, time_remaining: float | None = None
    ) -> list[WriteResult]:
        """Store `writes`; one result per write, in order. Safe to call again with the same writes."""
        if not writes:
            return []
        return await with_retries(
            lambda: self._write_once(writes), budget_seconds=self._budget(time_remaining)
        )

    async def _write_once(self, writes: Sequence[PacketWrite]) -> list[WriteResult]:
        results: list[WriteResult | None] = [None] * len(writes)
        by_topic: dict[str, list[int]] = defaultdict(list)
        if self._cluster:
            # Claim every tracking id for its topic first. One claimed by
            # another topic, or held by a task, finding or record (claim: ""),
            # is a different packet: a conflict, decided before anything is
            # written for it.
            claimed = await claim_tracking_ids(self._redis, writes)
            for i, (w, owner) in enumerate(zip(writes, claimed, strict=True)):
                if owner is not None and owner is not PLACED_BUT_OURS and text(owner) != w.topic:
                    results[i] = WriteResult(Outcome.CONFLICT, "", 0)
                else:
                    by_topic[w.topic].append(i)
            # Rare: a placed id whose location names this topic. Only a packet stored
            # before the place was noted (its retry answers "dup", as on a single Redis)
            # goes on; a claim another dispatch of it is giving back does not.
            doubtful = [i for i, owner in enumerate(claimed) if owner is PLACED_BUT_OURS]
            if doubtful:
                kept = await records_exist(self._redis, [writes[i] for i in doubtful])
                for i, stored in zip(doubtful, kept, strict=True):
                    if not stored:
                        results[i] = WriteResult(Outcome.CONFLICT, "", 0)
                        by_topic[writes[i].topic].remove(i)
                by_topic = defaultdict(list, {t: ix for t, ix in by_topic.items() if ix})
        else:
            for i, w in enumerate(writes):
                by_topic[w.topic].append(i)

        # One script per topic slot; different topics may live on different
        # cluster nodes, so they run concurrently. A topic's chunks run one after
        # another: run together, a later chunk could be stored first, and the
        # topic's order would no longer be the batch's.
        async def write_topic(topic: str, indexes: list[int]) -> None:
            for start in range(0, len(indexes), _MAX_PACKETS_PER_SCRIPT):
                chunk = indexes[start : start + _MAX_PACKETS_PER_SCRIPT]
                reply = await self._write_topic(topic, [writes[i] for i in chunk])
                for i, result in zip(chunk, reply, strict=True):
                    results[i] = result

        fresh_topics = self._topics_to_note(by_topic)
        work = [write_topic(topic, indexes) for topic, indexes in by_topic.items()]
        if fresh_topics:
            work.append(self._note_topics(fresh_topics))
        if len(work) == 1:
            # Nearly every call (one topic, its index noted lately): awaited in
            # place, where gather would wrap it in a Task of its own and a loop
            # turn to start it, on every single-packet Dispatch (issue 16).
            await work[0]
        else:
            await asyncio.gather(*work)

        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    async def note_topics(self, topics: Sequence[str]) -> None:
        """Put `topics` in the topic index (for writes outside `write`, e.g. governance
        or a consumer group created)."""
        fresh = self._topics_to_note(topics)
        if fresh:
            await with_retries(lambda: self._note_topics(fresh), budget_seconds=self._retry_budget)

    async def note_queues(self, queues: Sequence[str]) -> None:
        """Put `queues` in the task queue index (_keys.QUEUES), as note_topics does
        topics: what /metrics finds task queues by instead of a SCAN."""
        fresh = self._topics_to_note(queues, _keys.QUEUES)
        if fresh:
            await with_retries(
                lambda: self._note_topics(fresh, _keys.QUEUES),
                budget_seconds=self._retry_budget,
            )

    def _topics_to_note(self, topics: Iterable[str], index: str = _keys.TOPICS) -> list[str]:
        # The indexes are for export and /metrics, not for routing: noting each name
        # once a minute per server keeps them current without a write per dispatch.
        now = time.monotonic()
        return [t for t in topics if now - self._noted.get((index, t), -_NOTE_EVERY) >= _NOTE_EVERY]

    async def _note_topics(self, topics: list[str], index: str = _keys.TOPICS) -> None:
        # A pipeline of its own after the writes' scripts: the index is one key, in
        # a slot of its own, and a script touches the keys of one hash tag only.
        now_ms = self.clock.now_ms()
        pipe = self._redis.pipeline(transaction=False)
        pipe.zadd(index, dict.fromkeys(topics, now_ms))
        pipe.pexpire(index, 2 * self._retention_ms)
        await pipe.execute()
        if len(self._noted) > _MAX_NOTED:
            self._noted.clear()
        now = time.monotonic()
        self._noted.update(dict.fromkeys(((index, t) for t in topics), now))

    async def topics(self) -> list[str]:
        """Every topic written to within the retention window, oldest first."""

        async def attempt() -> list[str]:
            since = self.clock.now_ms() - self._retention_ms
            found: Any = await self._redis.zrangebyscore(_keys.TOPICS, since, "+inf")
            return [text(t) for t in found]

        return await with_retries(attempt, budget_seconds=self._retry_budget)

    async def read_range(self, topic: str, after: str, *, count: int) -> LogPage:
        """Up to `count` entries after `after`, without waiting."""

        async def attempt() -> LogPage:
            entries: Any = await self._redis.xrange(
                _keys.topic_log(topic), min=f"({after}", count=count
            )
            page = unexpired_page(entries, self.clock.now_ms())
            return LogPage(await self._expanded(topic, page.entries), page.last_cursor)

        return await with_retries(attempt, budget_seconds=self._retry_budget)

    async def _write_topic(self, topic: str, writes: list[PacketWrite]) -> list[WriteResult]:
        claim_here = not self._cluster
        # One call's writes share one sealed batch (or none: _batch_refs).
        batch_id, batch = writes[0].batch_id, writes[0].batch
        if any(w.batch_id != batch_id for w in writes):
            raise ValueError("one script call stores the packets of one sealed batch")
        keys = [
            _keys.topic_log(topic),
            _keys.topic_groups(topic),
            _keys.topic_horizon(topic),
            _keys.ingest_batch(topic, batch_id),
        ]
        leaves = b"".join(b"%08d" % w.leaf for w in writes) if batch_id else b""
        args: list[object] = [
            self._retention_ms,
            3 if claim_here else 1,
            topic,
            batch,
            batch_id,
            leaves,
        ]
        for w in writes:
            keys.append(_keys.packet_record(topic, w.tracking_id))
            if claim_here:
                keys.append(_keys.packet_location(w.tracking_id))
                keys.append(_keys.packet_place(w.tracking_id))
            args.append(dispatch_argument(w))
        reply = await _scripts.DISPATCH.run(self._redis, keys, args)
        results = [
            WriteResult(OUTCOMES[status], text(cursor), int(expiry))
            for status, cursor, expiry in reply
        ]
        if batch_id and any(r.outcome is Outcome.STORED for r in results):
            # Stored with its entries (scripts/dispatch.lua): the readers this write
            # wakes find it cached instead of reading it back.
            self._expander.remember(topic, batch_id, batch)
        return results

    async def get(
        self, tracking_id: str, *, time_remaining: float | None = None
    ) -> FoundPacket | None:
        async def attempt() -> FoundPacket | None:
            location = _keys.packet_location(tracking_id)
            located = await self._redis.get(location)
            if located is None:
                return None
            topic = location_topic(located)
            keys = [
                _keys.packet_record(topic, tracking_id),
                _keys.topic_log(topic),
                _keys.custody_hops(topic, tracking_id),
            ]
            if not self._cluster:
                keys.append(location)
            reply = await _scripts.GET_PACKET.run(self._redis, keys, [topic])
            if reply is None:
                return None
            cursor, expiry, payload, content_length, ref, *hops = reply
            # The record is keyed by the tracking id: its log entry's is the same.
            # Its batch as stored now, not as cached: VerifyCustody reads through here.
            [stored] = await self._expander.expand(
                topic,
                [(bytes(payload), int(content_length), tracking_id.encode(), bytes(ref))],
                cached=False,
            )
            return FoundPacket(
                topic,
                text(cursor),
                int(expiry),
                _wire.with_chain(stored, hops),
                int(content_length),
            )

        return await with_retries(attempt, budget_seconds=self._budget(time_remaining))

    async def last_cursor(self, topic: str) -> str:
        """Where a subscription "from now" starts: the newest entry the topic's log holds or
        has held (trimmed, or gone with a whole log that expired: its horizon), "0-0" when
        none is known. Resuming after it reports no gap for what was gone before it."""

        async def attempt() -> str:
            # One round trip (both keys share the topic's slot). "l", the newest a
            # dispatch appended: gone when the log expired as a whole and no dispatch
            # has recorded that as "x" yet (follow_horizon).
            pipe = self._redis.pipeline(transaction=False)
            pipe.xrevrange(_keys.topic_log(topic), count=1)
            pipe.hmget(_keys.topic_horizon(topic), "t", "x", "l")
            newest, marks = await pipe.execute()
            return (
                newest_cursor(text(newest[0][0]) if newest else "", *(text(m) for m in marks if m))
                or "0-0"
            )

        return await with_retries(attempt, budget_seconds=self._retry_budget)

    async def follow(
        self, topic: str, cursor: str, *, count: int, max_bytes: int = 0
    ) -> FollowPage:
        """Up to `count` entries after `cursor`, and up to `max_bytes` of them (packet bytes
        plus content length; the first always; 0: no bound), with the topic's horizon as
        it was when they were read (scripts/follow.lua), without waiting. Callers asking
        for the same page while it is read share it: it is theirs to read, not to change."""

        async def attempt() -> FollowPage:
            reply: Any = await _scripts.FOLLOW.run(
                self._redis,
                [_keys.topic_log(topic), _keys.topic_horizon(topic)],
                [cursor, count, max_bytes],
            )
            trimmed, expired, last, held, raw, cut = reply
            entries, last_cursor = publications((i, entry_fields(f)) for i, f in raw)
            return FollowPage(
                await self._expanded(topic, entries),
                last_cursor,
                len(raw) < count and not int(cut),
                follow_horizon(trimmed, expired, last, int(held)),
            )

        return await self._pages.run(
            (topic, cursor, count, max_bytes),
            lambda: with_retries(attempt, budget_seconds=self._retry_budget),
        )

    async def wait_after(self, topic: str, cursor: str, *, block_ms: int) -> None:
        """Return once the topic's log has an entry after `cursor`, or after `block_ms`."""

        async def attempt() -> None:
            await self._reads.xread({_keys.topic_log(topic): cursor}, count=1, block_ms=block_ms)

        await with_retries(attempt, budget_seconds=self._retry_budget + block_ms / 1000)
