"""Storage for the carcel: one stream per topic (pb:{topic}:carcel), read, requeued, purged.

Packets get there through scripts/settle.lua (a consumer group's poison
packets) and scripts/policy_decide.lua and policy_deny.lua (governance); this module reads the carcel back, with each packet's custody hops,
and puts packets back on their topic.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from packetbus import _wire

from . import _batch_refs, _keys, _scripts
from ._cursors import cursor_millis
from ._hop_store import HopStore
from ._replies import text
from ._retry import with_retries
from ._scripts import RedisClient


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
    # A governance rejection's (or denial's) rule and policy version.
    rule_id: str = ""
    policy_version: str = ""

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
    def __init__(
        self,
        redis: RedisClient,
        hops: HopStore,
        *,
        retry_budget: float,
        expander: _batch_refs.Expander | None = None,
    ) -> None:
        self._redis = redis
        self._hops = hops
        # Shared with the server's other readers: one cache of decoded batches.
        self._expander = expander or _batch_refs.Expander(redis)
        self._retry_budget = retry_budget

    async def _read(self, topic: str, low: str, high: str, count: int) -> list[CarcelRecord]:
        """Entries of `topic`'s carcel from `low` to `high` (XRANGE bounds), with their hops."""

        async def attempt() -> Any:
            return await self._redis.xrange(_keys.carcel(topic), low, high, count=count)

        raw: Any = await with_retries(attempt, budget_seconds=self._retry_budget)
        tids = [text(fields.get(b"i", b"")) for _, fields in raw]
        hops = await self._hops.read(topic, tids)
        # Stored-once entries get the server's ingest entries back (_batch_refs).
        payloads = await self._expander.expand(
            topic,
            [
                (bytes(fields[b"p"]), int(fields[b"n"]), tid.encode(), fields.get(b"b", b""))
                for (_, fields), tid in zip(raw, tids, strict=True)
            ],
        )
        return [
            CarcelRecord(
                id=text(entry_id),
                topic=topic,
                tracking_id=tid,
                stored=stored,
                hops=entries,
                content_length=int(fields[b"n"]),
                ttl_ms=int(fields[b"t"]),
                cursor=text(fields[b"c"]),
                reason=text(fields[b"r"]),
                detail=text(fields[b"d"]),
                source=text(fields[b"s"]),
                delivery_count=int(fields[b"a"]),
                rule_id=text(fields.get(b"u", b"")),
                policy_version=text(fields.get(b"v", b"")),
            )
            for (entry_id, fields), tid, entries, stored in zip(
                raw, tids, hops, payloads, strict=True
            )
        ]

    async def page(self, topic: str, after: str | None, count: int) -> list[CarcelRecord]:
        """Up to `count` entries of `topic`'s carcel after entry `after`, oldest first."""
        return await self._read(topic, f"({after}" if after else "-", "+", count)

    async def get(self, topic: str, entry_id: str) -> CarcelRecord | None:
        records = await self._read(topic, entry_id, entry_id, 1)
        return records[0] if records else None

    async def requeue(
        self,
        topic: str,
        record: CarcelRecord,
        expected_hops: int,
        entry: bytes,
        entry_hash: bytes,
        call_id: str,
    ) -> Requeued:
        """Put a carceled packet back on its topic for its group. `call_id` names the
        RequeueCarcelEntry call: only its own retries are answered as its first run."""

        async def attempt() -> Requeued:
            reply = await _scripts.CARCEL_REQUEUE.run(
                self._redis,
                [
                    _keys.carcel(topic),
                    _keys.topic_log(topic),
                    _keys.topic_groups(topic),
                    _keys.custody_hops(topic, record.tracking_id),
                ],
                [record.id, expected_hops, entry, entry_hash, call_id],
            )
            outcome = RequeueOutcome(text(reply[0]))
            value = text(reply[1]) if len(reply) > 1 else ""
            return Requeued(outcome, value, bytes(reply[2]) if len(reply) > 2 else b"")

        result: Requeued = await with_retries(attempt, budget_seconds=self._retry_budget)
        return result

    async def requeue_task(
        self,
        queue: str,
        record: CarcelRecord,
        expected_hops: int,
        entry: bytes,
        entry_hash: bytes,
        call_id: str,
    ) -> Requeued:
        """Put a carceled task (its carcel entry's cursor is "task:<id>") back in its
        queue; `call_id` as for requeue."""
        task_id = record.cursor.removeprefix("task:")

        async def attempt() -> Requeued:
            reply = await _scripts.TASK_REQUEUE.run(
                self._redis,
                [
                    _keys.carcel(queue),
                    _keys.task_events(queue),
                    _keys.custody_hops(queue, record.tracking_id),
                ],
                [
                    _keys.queue_prefix(queue),
                    record.id,
                    task_id,
                    expected_hops,
                    entry,
                    entry_hash,
                    call_id,
                ],
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
