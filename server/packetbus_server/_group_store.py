"""Storage for consumer groups and the carcel: leases, settlements and custody hops.

A consumer group is a Redis Streams consumer group on the topic's log: Redis
keeps each delivery's consumer, lease start and delivery count (the pending
entries list), and every change to them is a Lua script that checks before it
writes, so any call here can be replayed after a lost reply. Custody hops are
signed by the server before a script runs and appended only where they were
signed to go (see scripts/lib/hops.lua).
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import _batch_refs, _keys, _replies, _scripts
from ._cursors import cursor_millis
from ._limits import Limits
from ._replies import text
from ._retry import with_retries
from ._scripts import RedisClient
from ._topic_store import TopicStore
from ._waits import SharedReads


class GroupStatus(enum.Enum):
    CREATED = "created"
    EXISTS = "exists"
    CONFLICT = "conflict"


@dataclass(frozen=True, slots=True)
class GroupSettings:
    ack_deadline_ms: int
    max_attempts: int
    created_ms: int

    @classmethod
    def parse(cls, raw: bytes | str) -> GroupSettings:
        deadline, attempts, created = text(raw).split()
        return cls(int(deadline), int(attempts), int(created))


@dataclass(frozen=True, slots=True)
class GroupState:
    name: str
    settings: GroupSettings
    outstanding: int
    consumers: int
    last_delivered: str
    # Entries not yet delivered to the group (XINFO GROUPS lag, Redis 7.0+ and
    # Valkey); None when the store cannot tell (entries deleted from the middle of
    # the log since the group last read past them).
    lag: int | None = None


# Not frozen: made for every packet on the delivery path, where a frozen
# dataclass's __init__ (object.__setattr__ per field) costs four times as much.
@dataclass(slots=True)
class Leased:
    """One log entry leased to a consumer."""

    cursor: str
    count: int
    tracking_id: str
    payload: bytes
    content_length: int
    # When the packet expires (unix ms): its log entry's time plus its TTL.
    expires_at_ms: int
    # Set when its ingest entries were rebuilt from a sealed batch (_batch_refs).
    known: _batch_refs.Known | None = None


@dataclass(frozen=True, slots=True)
class Pulled:
    now_ms: int
    ack_deadline_ms: int
    max_attempts: int
    # The log's newest entry when the lease was taken: wait for entries after it.
    newest: str
    # The look for run-out leases went through the whole pending list.
    scanned: bool
    entries: list[Leased]


class Kind(enum.Enum):
    ACK = "ack"
    NACK = "nack"
    RELEASE = "release"
    EXTEND = "extend"
    CARCEL = "carcel"


# Settlements after which a group no longer holds the packet.
_SETTLED_KINDS = (Kind.ACK, Kind.CARCEL)


# Not frozen, as above.
@dataclass(slots=True)
class Settle:
    kind: Kind
    cursor: str
    count: int
    tracking_id: str
    # The packet's hops before this settlement's own; with `entry` (empty when
    # the server does not sign) and its hash.
    expected_hops: int = 0
    entry: bytes = b""
    entry_hash: bytes = b""
    # NACK: redeliver after this many ms. CARCEL: reason, detail, source, and the
    # deliveries made (`count` itself for a nack of the last attempt; one less for
    # a lease that ran out on it, which the pull that found it counted as a new
    # delivery it never sent).
    delay_ms: int = 0
    carcel: tuple[str, str, str] = ("", "", "")
    deliveries: int = 0
    # When the packet expires: its hops are kept until then.
    expires_at_ms: int = 0


class Outcome(enum.Enum):
    OK = "ok"
    GONE = "gone"
    LOST = "lost"
    STALE = "stale"


# Looked up per settlement: a dict is far cheaper than Enum's call by value.
_OUTCOMES = {o.value: o for o in Outcome}
_REPLY_BUDGET = Limits().reply_budget_bytes


# Not frozen, as above.
@dataclass(slots=True)
class Settled:
    outcome: Outcome
    # OK: the lease end in ms (extend) or the carcel entry id (carcel).
    # GONE: the group's last settlement of the packet. LOST: the delivery count now.
    # STALE: the packet's hop count now.
    value: str = ""
    # STALE: the newest hop's hash.
    last_hash: bytes = b""


class GroupStore:
    def __init__(
        self,
        redis: RedisClient,
        *,
        retry_budget: float,
        carcel_retention_ms: int,
        reads: SharedReads | None = None,
        retention: TopicStore | None = None,
        expander: _batch_refs.Expander | None = None,
        note_topics: Callable[[Sequence[str]], Awaitable[None]] | None = None,
    ) -> None:
        self._redis = redis
        # Puts a group's topic in the topic index (PacketStore.note_topics), where
        # /metrics finds groups: a topic never dispatched to is in it no other way.
        self._note_topics = note_topics
        # Work-queue retention drops what every group acked, after a settlement.
        self._retention = retention
        # Shared with the server's other readers: one cache of decoded batches.
        self._expander = expander or _batch_refs.Expander(redis)
        self._reads = reads or SharedReads(redis)
        self._retry_budget = retry_budget
        self.carcel_retention_ms = carcel_retention_ms

    async def _retried(self, operation: Any, budget: float | None = None) -> Any:
        return await with_retries(operation, budget_seconds=budget or self._retry_budget)

    async def create(
        self, topic: str, name: str, *, start: str, ack_deadline_ms: int, max_attempts: int
    ) -> tuple[GroupStatus, GroupSettings]:
        async def attempt() -> tuple[GroupStatus, GroupSettings]:
            status, settings = await _scripts.GROUP_CREATE.run(
                self._redis,
                [_keys.topic_log(topic), _keys.topic_groups(topic)],
                [name, start, ack_deadline_ms, max_attempts],
            )
            return GroupStatus(text(status)), GroupSettings.parse(settings)

        result: tuple[GroupStatus, GroupSettings] = await self._retried(attempt)
        if self._note_topics is not None:
            await self._note_topics([topic])
        return result

    async def delete(self, topic: str, name: str) -> bool:
        async def attempt() -> bool:
            existed = await _scripts.GROUP_DELETE.run(
                self._redis, [_keys.topic_log(topic), _keys.topic_groups(topic)], [name]
            )
            return bool(existed)

        deleted: bool = await self._retried(attempt)
        if self._retention is not None:
            # Work-queue retention: the group gone may have been the last one not
            # to ack a prefix the others acked; with no later ack on the topic,
            # nothing else would drop it. Also on a replay (deleted False): the
            # first call may have failed after the delete, before this.
            await self._retention.after_acks(topic)
        return deleted

    async def settings(self, topic: str, name: str) -> GroupSettings | None:
        async def attempt() -> GroupSettings | None:
            raw = await self._redis.hget(_keys.topic_groups(topic), name)
            return None if raw is None else GroupSettings.parse(raw)

        found: GroupSettings | None = await self._retried(attempt)
        return found

    async def states(self, topic: str, name: str | None = None) -> list[GroupState]:
        """Every group of `topic` (or only `name`), with Redis's view of each."""

        async def attempt() -> list[GroupState]:
            registry: dict[Any, Any] = await self._redis.hgetall(_keys.topic_groups(topic))
            # A field that is not UTF-8 is no group a server made: left out (_replies).
            fields = ((_replies.name(k), v) for k, v in registry.items())
            settings = {
                k: GroupSettings.parse(v)
                for k, v in fields
                if k is not None and ":" not in k and (name is None or k == name)
            }
            if not settings:
                return []
            try:
                info: Any = await self._redis.xinfo_groups(_keys.topic_log(topic))
            except Exception as exc:  # the log is gone: no group has state
                if "no such key" not in str(exc).lower():
                    raise
                info = []
            live = {n: g for g in info if (n := _replies.name(g["name"])) is not None}
            states = []
            for group, s in sorted(settings.items()):
                g = live.get(group, {})
                states.append(
                    GroupState(
                        name=group,
                        settings=s,
                        outstanding=int(g.get("pending", 0)),
                        consumers=int(g.get("consumers", 0)),
                        last_delivered=text(g.get("last-delivered-id", "0-0")),
                        # No live group (the log is gone): nothing is left to deliver.
                        lag=None if g and g.get("lag") is None else int(g.get("lag") or 0),
                    )
                )
            return states

        states: list[GroupState] = await self._retried(attempt)
        return states

    async def pull(
        self,
        topic: str,
        group: str,
        consumer: str,
        count: int,
        *,
        max_bytes: int = _REPLY_BUDGET,
        scan: bool = True,
    ) -> Pulled | None:
        """Lease up to `count` entries to `consumer`, first (with `scan`) those whose
        lease ran out, and at most `max_bytes` of them (packet bytes plus content
        length; one entry always, however large); None when the group does not exist.
        What does not fit is not leased and its delivery count is not raised. A retry
        after a lost reply answers what the first run leased (the pull's id keys it)."""
        pull_id = uuid.uuid4().hex

        async def attempt() -> Pulled | None:
            reply = await _scripts.GROUP_PULL.run(
                self._redis,
                [
                    _keys.topic_log(topic),
                    _keys.topic_groups(topic),
                    _keys.group_pull(topic, pull_id),
                ],
                [group, consumer, count, int(scan), max_bytes],
            )
            if text(reply[0]) == "nogroup":
                return None
            now_ms, deadline_ms, max_attempts, newest, scanned = reply[:5]
            rest = reply[5:]
            entries = [
                Leased(
                    cursor=text(rest[j]),
                    count=int(rest[j + 1]),
                    tracking_id=text(rest[j + 2]),
                    payload=bytes(rest[j + 3]),
                    content_length=int(rest[j + 4]),
                    expires_at_ms=cursor_millis(text(rest[j])) + int(rest[j + 5]),
                )
                for j in range(0, len(rest), 7)
            ]
            refs = [bytes(rest[j + 6]) for j in range(0, len(rest), 7)]
            entries = await _batch_refs.expanded(self._expander, topic, entries, refs)
            return Pulled(
                int(now_ms),
                int(deadline_ms),
                int(max_attempts),
                text(newest),
                scanned == 1,
                entries,
            )

        pulled: Pulled | None = await self._retried(attempt)
        return pulled

    async def wait_for_entries(self, topic: str, after: str, block_ms: int) -> None:
        """Return once the log has an entry after `after`, or after `block_ms`."""

        async def attempt() -> None:
            await self._reads.xread(
                {_keys.topic_log(topic): after}, count=1, block_ms=block_ms, shared=False
            )

        await self._retried(attempt, self._retry_budget + block_ms / 1000)

    async def settle(
        self, topic: str, group: str, items: Sequence[Settle], *, budget: float | None = None
    ) -> list[Settled] | None:
        """Settle `items`, one result each; None when the group does not exist."""
        if not items:
            return []

        async def attempt() -> list[Settled] | None:
            keys = [_keys.topic_log(topic), _keys.topic_groups(topic), _keys.carcel(topic)]
            args: list[Any] = [group, self.carcel_retention_ms]
            for item in items:
                keys.append(_keys.custody_hops(topic, item.tracking_id))
                argument = (
                    "\n".join((*item.carcel, str(item.deliveries)))
                    if item.kind is Kind.CARCEL
                    else item.delay_ms
                )
                args += (
                    f"{item.kind.value} {item.cursor} {item.count} {item.expected_hops} "
                    f"{item.expires_at_ms} {argument}",
                    item.entry,
                    item.entry_hash,
                )
            reply = await _scripts.SETTLE.run(self._redis, keys, args)
            if reply and not isinstance(reply[0], list) and text(reply[0]) == "nogroup":
                return None
            return [
                Settled(
                    _OUTCOMES[text(r[0])],
                    text(r[1]) if len(r) > 1 else "",
                    bytes(r[2]) if len(r) > 2 else b"",
                )
                for r in reply
            ]

        result: list[Settled] | None = await self._retried(attempt, budget)
        if (
            self._retention is not None
            and result
            and any(
                r.outcome is Outcome.OK and i.kind in _SETTLED_KINDS
                for i, r in zip(items, result, strict=True)
            )
        ):
            await self._retention.after_acks(topic)
        return result

    async def read_entries(
        self, topic: str, cursors: Sequence[str]
    ) -> list[_batch_refs.Row | None]:
        """Per cursor: (tracking id, packet bytes, content length, TTL ms, what expanding
        it learnt: `_batch_refs.Known` or None), or None if gone."""

        async def attempt() -> list[_batch_refs.Row | None]:
            pipe = self._redis.pipeline(transaction=False)
            for cursor in cursors:
                pipe.xrange(_keys.topic_log(topic), cursor, cursor)
            replies = await pipe.execute()
            refs: list[bytes] = []
            out: list[_batch_refs.Row | None] = []
            for reply in replies:
                if not reply:
                    out.append(None)
                    continue
                fields = reply[0][1]
                out.append(
                    (
                        text(fields.get(b"i", b"")),
                        bytes(fields[b"p"]),
                        int(fields[b"n"]),
                        int(fields[b"t"]),
                        None,
                    )
                )
                refs.append(fields.get(b"b", b""))
            return await _batch_refs.expanded_rows(self._expander, topic, out, refs)

        result: list[_batch_refs.Row | None] = await self._retried(attempt)
        return result
