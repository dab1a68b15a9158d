"""Storage for the carcel: one stream per topic (pb:{topic}:carcel), read, requeued, purged.

Packets get there through scripts/settle.lua (a consumer group's poison
packets); this module reads the carcel back, with each packet's custody hops,
and puts packets back on their topic.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from packetbus import _wire

from . import _keys, _scripts
from ._replies import text
from ._retry import with_retries
from ._scripts import RedisClient
from ._store import cursor_millis


@dataclass(frozen=True, slots=True)
class CarcelRecord:
    id: str
    topic: str
    tracking_id: str
    # Content, then the entries stored at ingest.
    stored: bytes
    # The custody hops since, serialized.
    hops: list[bytes]
    content_length: int
    ttl_ms: int
    cursor: str
    reason: str
    detail: str
    source: str
    delivery_count: int

    @property
    def payload(self) -> bytes:
        """Content, then the whole chain."""
        return _wire.with_chain(self.stored, self.hops)

    @property
    def carceled_at_ms(self) -> int:
        return cursor_millis(self.id)


class RequeueOutcome(enum.Enum):
    OK = "ok"
    GONE = "gone"
    STALE = "stale"
    NO_GROUP = "nogroup"


@dataclass(frozen=True, slots=True)
class Requeued:
    outcome: RequeueOutcome
    # OK: the new cursor. STALE: the hop count now. NO_GROUP: the entry's source.
    value: str = ""
    last_hash: bytes = b""


class CarcelStore:
    def __init__(self, redis: RedisClient, *, retry_budget: float) -> None:
        self._redis = redis
        self._retry_budget = retry_budget

    async def _with_hops(self, topic: str, raw: Sequence[Any]) -> list[CarcelRecord]:
        tids = [text(fields.get(b"i", b"")) for _, fields in raw]
        pipe = self._redis.pipeline(transaction=False)
        for tid in tids:
            pipe.hgetall(_keys.custody_hops(topic, tid))
        hop_sets = await pipe.execute() if tids else []
        records = []
        for (entry_id, fields), tid, hops in zip(raw, tids, hop_sets, strict=True):
            n = int(hops.get(b"n", 0))
            entries = [bytes(hops[str(j).encode()]) for j in range(1, n + 1)]
            records.append(
                CarcelRecord(
                    id=text(entry_id),
                    topic=topic,
                    tracking_id=tid,
                    stored=bytes(fields[b"p"]),
                    hops=entries,
                    content_length=int(fields[b"n"]),
                    ttl_ms=int(fields[b"t"]),
                    cursor=text(fields[b"c"]),
                    reason=text(fields[b"r"]),
                    detail=text(fields[b"d"]),
                    source=text(fields[b"s"]),
                    delivery_count=int(fields[b"a"]),
                )
            )
        return records

    async def page(self, topic: str, after: str | None, count: int) -> list[CarcelRecord]:
        """Up to `count` entries of `topic`'s carcel after entry `after`, oldest first."""

        async def attempt() -> list[CarcelRecord]:
            low = f"({after}" if after else "-"
            raw: Any = await self._redis.xrange(_keys.carcel(topic), low, "+", count=count)
            return await self._with_hops(topic, raw)

        result: list[CarcelRecord] = await with_retries(attempt, budget_seconds=self._retry_budget)
        return result

    async def get(self, topic: str, entry_id: str) -> CarcelRecord | None:
        async def attempt() -> CarcelRecord | None:
            raw: Any = await self._redis.xrange(_keys.carcel(topic), entry_id, entry_id)
            records = await self._with_hops(topic, raw)
            return records[0] if records else None

        result: CarcelRecord | None = await with_retries(attempt, budget_seconds=self._retry_budget)
        return result

    async def requeue(
        self, topic: str, record: CarcelRecord, expected_hops: int, entry: bytes, entry_hash: bytes
    ) -> Requeued:
        async def attempt() -> Requeued:
            reply = await _scripts.CARCEL_REQUEUE.run(
                self._redis,
                [
                    _keys.carcel(topic),
                    _keys.topic_log(topic),
                    _keys.topic_groups(topic),
                    _keys.custody_hops(topic, record.tracking_id),
                ],
                [record.id, expected_hops, entry, entry_hash],
            )
            outcome = RequeueOutcome(text(reply[0]))
            value = text(reply[1]) if len(reply) > 1 else ""
            return Requeued(outcome, value, bytes(reply[2]) if len(reply) > 2 else b"")

        result: Requeued = await with_retries(attempt, budget_seconds=self._retry_budget)
        return result

    async def requeue_task(
        self, queue: str, record: CarcelRecord, expected_hops: int, entry: bytes, entry_hash: bytes
    ) -> Requeued:
        """Put a carceled task (its carcel entry's cursor is "task:<id>") back in its queue."""
        task_id = record.cursor.removeprefix("task:")

        async def attempt() -> Requeued:
            reply = await _scripts.TASK_REQUEUE.run(
                self._redis,
                [
                    _keys.carcel(queue),
                    _keys.task_events(queue),
                    _keys.custody_hops(queue, record.tracking_id),
                ],
                [_keys.queue_prefix(queue), record.id, task_id, expected_hops, entry, entry_hash],
            )
            status = text(reply[0])
            if status == "not_carceled":
                return Requeued(RequeueOutcome.GONE, text(reply[1]))
            outcome = RequeueOutcome(status)
            value = text(reply[1]) if len(reply) > 1 else ""
            return Requeued(outcome, value, bytes(reply[2]) if len(reply) > 2 else b"")

        result: Requeued = await with_retries(attempt, budget_seconds=self._retry_budget)
        return result

    async def purge(self, topic: str, ids: Sequence[str]) -> int:
        """Remove these entries (all of the topic's carcel when `ids` is empty); how many went."""

        async def attempt() -> int:
            key = _keys.carcel(topic)
            if ids:
                return int(await self._redis.xdel(key, *ids))
            pipe = self._redis.pipeline(transaction=True)
            pipe.xlen(key)
            pipe.delete(key)
            length, _ = await pipe.execute()
            return int(length)

        result: int = await with_retries(attempt, budget_seconds=self._retry_budget)
        return result
