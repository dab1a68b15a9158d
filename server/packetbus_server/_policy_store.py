"""Storage for governance: rejected and held packets, approvals, denials, counts, decision log.

Everything lives in the topic's slot (scripts/policy_*.lua), beside its log
and carcel, so one script records a decision, its count and its log entry.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import RedisCluster

from . import _keys, _replies, _scripts
from ._cursors import cursor_millis
from ._packet_writes import PacketWrite, dispatch_argument
from ._policy import Verdict
from ._replies import text
from ._retry import with_retries
from ._scripts import RedisClient
from ._store import PacketStore


@dataclass(frozen=True, slots=True)
class DecisionWrite:
    write: PacketWrite
    verdict: Verdict
    rule_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Decided:
    """What a topic's records say about one packet after a decision was recorded."""

    # "rejected", "held", "stored" or "conflict".
    status: str
    # The carcel entry id, the held entry id, or the cursor.
    id: str
    expiry_ms: int
    rule_id: str = ""
    reason: str = ""
    version: str = ""


@dataclass(frozen=True, slots=True)
class HeldRecord:
    id: str
    topic: str
    tracking_id: str
    # Content, then the chain up to the server's "held" entry.
    stored: bytes
    content_length: int
    ttl_ms: int
    rule_id: str
    reason: str
    version: str

    @property
    def held_at_ms(self) -> int:
        return cursor_millis(self.id)

    @property
    def expires_at_ms(self) -> int:
        return self.held_at_ms + self.ttl_ms


@dataclass(frozen=True, slots=True)
class DecisionRow:
    id: str
    topic: str
    kind: str
    tracking_id: str
    rule_id: str
    reason: str
    version: str
    actor: str


def _fields(flat: Any) -> dict[bytes, bytes]:
    if isinstance(flat, dict):
        return flat
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _held(topic: str, entry_id: Any, fields: dict[bytes, bytes]) -> HeldRecord:
    return HeldRecord(
        id=text(entry_id),
        topic=topic,
        tracking_id=text(fields[b"i"]),
        stored=bytes(fields[b"p"]),
        content_length=int(fields[b"n"]),
        ttl_ms=int(fields[b"t"]),
        rule_id=text(fields.get(b"u", b"")),
        reason=text(fields.get(b"r", b"")),
        version=text(fields.get(b"v", b"")),
    )


class PolicyStore:
    def __init__(
        self,
        redis: RedisClient,
        packets: PacketStore,
        *,
        retry_budget: float,
        retention_ms: int,
        carcel_retention_ms: int,
        server_id: str,
    ) -> None:
        self._redis = redis
        self._packets = packets
        self._cluster = isinstance(redis, RedisCluster)
        self._retry_budget = retry_budget
        self._retention_ms = retention_ms
        self._carcel_retention_ms = carcel_retention_ms
        self._server_id = server_id

    def _budget(self, time_remaining: float | None) -> float:
        if time_remaining is None:
            return self._retry_budget
        return max(0.0, min(self._retry_budget, time_remaining))

    async def decide(
        self,
        items: Sequence[DecisionWrite],
        version: str,
        *,
        time_remaining: float | None = None,
        dispatched: bool = True,
    ) -> list[Decided]:
        """Record each rejected or held packet (scripts/policy_decide.lua), one script per
        topic. `dispatched` (a Dispatch's packets): a tracking id a task, finding or
        record holds is a conflict (ALREADY_EXISTS, nothing written), as in
        scripts/dispatch.lua; a post's own rejection (False) is not judged by it."""
        by_topic: dict[str, list[int]] = defaultdict(list)
        for i, item in enumerate(items):
            by_topic[item.write.topic].append(i)
        results: list[Decided | None] = [None] * len(items)
        # On a cluster a tracking id's place is in another slot than the topic's keys:
        # read here, told to the script ("taken"). On a single Redis the script reads it.
        placed = await self._placed(items) if self._cluster and dispatched else [False] * len(items)
        width = 1 if self._cluster else (3 if dispatched else 2)

        async def one_topic(topic: str, indexes: list[int]) -> None:
            keys = [
                _keys.carcel(topic),
                _keys.held(topic),
                _keys.policy_stats(topic),
                _keys.policy_decisions(topic),
            ]
            args: list[object] = [
                self._carcel_retention_ms,
                version,
                self._server_id,
                self._retention_ms,
                width,
                topic,
            ]
            for i in indexes:
                item = items[i]
                keys.append(_keys.packet_record(topic, item.write.tracking_id))
                if not self._cluster:
                    # Where a packet dispatched on a single Redis keeps its record.
                    keys.append(_keys.packet_location(item.write.tracking_id))
                if width == 3:
                    keys.append(_keys.packet_place(item.write.tracking_id))
                kind = "reject" if item.verdict is Verdict.REJECT else "hold"
                if placed[i]:
                    kind = "taken"
                args += (kind, item.rule_id, item.reason, dispatch_argument(item.write))
            reply = await _scripts.POLICY_DECIDE.run(self._redis, keys, args)
            for i, (status, ref, expiry, rule, reason, ver) in zip(indexes, reply, strict=True):
                results[i] = Decided(
                    text(status), text(ref), int(expiry), text(rule), text(reason), text(ver)
                )

        async def attempt() -> None:
            await asyncio.gather(*(one_topic(t, ix) for t, ix in by_topic.items()))

        await with_retries(attempt, budget_seconds=self._budget(time_remaining))
        await self._packets.note_topics(list(by_topic))
        return results  # type: ignore[return-value]

    async def _placed(self, items: Sequence[DecisionWrite]) -> list[bool]:
        """Per item, whether a task, finding or record holds its tracking id
        (_placed_packets); one pipeline, retried. Read before the decision script, so
        a post noting its place between the two is the race _placed_packets names."""

        async def attempt() -> list[bool]:
            pipe = self._redis.pipeline(transaction=False)
            for item in items:
                pipe.exists(_keys.packet_place(item.write.tracking_id))
            return [bool(n) for n in await pipe.execute()]

        found: list[bool] = await with_retries(attempt, budget_seconds=self._retry_budget)
        return found

    async def lookup(self, topic: str, tracking_id: str) -> Decided | None:
        """What the packet's record says, with the decision's rule and reason (None: no record)."""

        async def attempt() -> Decided | None:
            keys = [_keys.packet_record(topic, tracking_id)]
            if not self._cluster:
                keys.append(_keys.packet_location(tracking_id))
            found_record: Any = await _scripts.RECORD_GET.run(self._redis, keys, [topic])
            if found_record is None:
                return None
            marker, expiry = text(found_record[0]), text(found_record[1])
            kind, _, ref = marker.partition(":")
            if not ref:
                return Decided("stored", marker, int(expiry))
            key = _keys.carcel(topic) if kind == "rejected" else _keys.held(topic)
            found: Any = await self._redis.xrange(key, ref, ref)
            fields = _fields(found[0][1]) if found else {}
            return Decided(
                kind,
                ref,
                int(expiry),
                text(fields.get(b"u", b"")),
                text(fields.get(b"r", b"")),
                text(fields.get(b"v", b"")),
            )

        found: Decided | None = await with_retries(attempt, budget_seconds=self._retry_budget)
        return found

    async def held_entry(self, topic: str, entry_id: str) -> HeldRecord | None:
        async def attempt() -> Any:
            return await self._redis.xrange(_keys.held(topic), entry_id, entry_id)

        found: Any = await with_retries(attempt, budget_seconds=self._retry_budget)
        return _held(topic, found[0][0], _fields(found[0][1])) if found else None

    async def held_page(self, topic: str, after: str | None, count: int) -> list[HeldRecord]:
        """Up to `count` held packets of `topic` after entry `after`, oldest first
        (expired ones left out)."""

        async def attempt() -> Any:
            low = f"({after}" if after else "-"
            return await self._redis.xrange(_keys.held(topic), low, "+", count=count)

        found: Any = await with_retries(attempt, budget_seconds=self._retry_budget)
        return [_held(topic, entry_id, _fields(fields)) for entry_id, fields in found]

    async def approve(
        self, record: HeldRecord, payload: bytes, approver: str
    ) -> tuple[str, list[str]]:
        """Store a held packet on its topic (scripts/policy_approve.lua): (status,
        values), "placed" among them: a task, finding or record holds its tracking id
        (nothing written)."""
        topic = record.topic
        if self._cluster:
            # A held packet claims no location on a cluster (its record is the
            # topic's): a task, finding or record may have taken its tracking id
            # meanwhile. Its place refuses the approval, unless this topic claimed
            # the id already (an approval retried: answered as before).
            location, place = (
                _keys.packet_location(record.tracking_id),
                _keys.packet_place(record.tracking_id),
            )

            async def seen() -> Any:
                pipe = self._redis.pipeline(transaction=False)
                pipe.get(location)
                pipe.exists(place)
                return await pipe.execute()

            owner, placed = await with_retries(seen, budget_seconds=self._retry_budget)
            if owner is None and placed:
                return "placed", []
            claimed: Any = await with_retries(
                lambda: self._redis.set(
                    _keys.packet_location(record.tracking_id),
                    topic,
                    nx=True,
                    px=record.ttl_ms,
                    get=True,
                ),
                budget_seconds=self._retry_budget,
            )
            if claimed is not None and text(claimed) != topic:
                return "taken", [text(claimed)]
        keys = [
            _keys.held(topic),
            _keys.topic_log(topic),
            _keys.topic_groups(topic),
            _keys.topic_horizon(topic),
            _keys.packet_record(topic, record.tracking_id),
            _keys.policy_stats(topic),
            _keys.policy_decisions(topic),
        ]
        if not self._cluster:
            keys.append(_keys.packet_location(record.tracking_id))
            keys.append(_keys.packet_place(record.tracking_id))
        args = [
            self._retention_ms,
            self._carcel_retention_ms,
            record.id,
            topic,
            approver,
            payload,
        ]
        reply: Any = await with_retries(
            lambda: _scripts.POLICY_APPROVE.run(self._redis, keys, args),
            budget_seconds=self._retry_budget,
        )
        await self._packets.note_topics([topic])
        return text(reply[0]), [text(v) for v in reply[1:]]

    async def deny(
        self, record: HeldRecord, payload: bytes, denier: str, reason: str
    ) -> tuple[str, list[str]]:
        """Carcel a held packet (scripts/policy_deny.lua): (status, values)."""
        topic = record.topic
        keys = [
            _keys.held(topic),
            _keys.carcel(topic),
            _keys.packet_record(topic, record.tracking_id),
            _keys.policy_stats(topic),
            _keys.policy_decisions(topic),
        ]
        if not self._cluster:
            keys.append(_keys.packet_location(record.tracking_id))
        args = [self._carcel_retention_ms, record.id, denier, reason, payload, topic]
        reply: Any = await with_retries(
            lambda: _scripts.POLICY_DENY.run(self._redis, keys, args),
            budget_seconds=self._retry_budget,
        )
        return text(reply[0]), [text(v) for v in reply[1:]]

    async def stats(self, topics: Sequence[str]) -> dict[str, Counter[str]]:
        """Counts by "rule", "reason" and "decision", added up over `topics`."""

        async def attempt() -> list[Any]:
            pipe = self._redis.pipeline(transaction=False)
            for topic in topics:
                pipe.hgetall(_keys.policy_stats(topic))
            return list(await pipe.execute())

        found: list[Any] = await with_retries(attempt, budget_seconds=self._retry_budget)
        totals: dict[str, Counter[str]] = {k: Counter() for k in ("rule", "reason", "decision")}
        for fields in found:
            for field, value in fields.items():
                # A field that is not UTF-8 is no count a server kept: left out.
                kind, _, key = (_replies.name(field) or "").partition(":")
                if kind in totals:
                    totals[kind][key] += int(value)
        return totals

    async def decisions(self, topic: str, low: str, high: str, count: int) -> list[DecisionRow]:
        """Up to `count` entries of `topic`'s decision log between `low` and `high` (XRANGE)."""

        async def attempt() -> Any:
            return await self._redis.xrange(_keys.policy_decisions(topic), low, high, count=count)

        found: Any = await with_retries(attempt, budget_seconds=self._retry_budget)
        rows = []
        for entry_id, raw in found:
            f = _fields(raw)
            rows.append(
                DecisionRow(
                    id=text(entry_id),
                    topic=topic,
                    kind=text(f.get(b"k", b"")),
                    tracking_id=text(f.get(b"i", b"")),
                    rule_id=text(f.get(b"u", b"")),
                    reason=text(f.get(b"r", b"")),
                    version=text(f.get(b"v", b"")),
                    actor=text(f.get(b"a", b"")),
                )
            )
        return rows
