"""Storage for task queues: post, claim, settle, read, watch (scripts/task_*.lua).

A queue's keys all carry the queue's hash tag; the per-task ones are derived
inside the scripts from the prefix ``pb:{queue}:`` (see scripts/lib/tasks.lua).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import _keys, _scripts
from ._cursors import cursor_order
from ._hop_store import HopStore
from ._packet_writes import PacketWrite
from ._replies import text
from ._retry import with_retries
from ._scripts import RedisClient
from ._waits import SharedReads

# Leases looked at when finding the tasks one worker holds.
_MAX_LEASES_SCANNED = 10_000


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """A task hash as stored; `hops` are its packet's custody hops since posting."""

    task_id: str
    fields: dict[bytes, bytes]
    hops: list[bytes]

    def text(self, name: str) -> str:
        return text(self.fields.get(name.encode(), b""))

    def number(self, name: str) -> int:
        return int(self.fields.get(name.encode(), b"0") or b"0")

    @property
    def payload(self) -> bytes:
        return bytes(self.fields[b"p"]) if b"p" in self.fields else b""


@dataclass(frozen=True, slots=True)
class Settled:
    """A settlement's outcome (scripts/task_settle.lua): ok | again | conflict | settled |
    gone | stale_fence | stale, its value and extra."""

    outcome: str
    value: str = ""
    extra: bytes = b""
    # Tasks whose "carceled" hop (a run-out lease's carcel move) is pending.
    carceled: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Claimed:
    """A claim's outcome (scripts/task_claim.lua): `record` is the task claimed (None
    when none was claimable), `again` whether the claim was made before for the
    same request id; `carceled` as for Settled."""

    record: TaskRecord | None
    again: bool = False
    carceled: tuple[str, ...] = ()


class TaskStore:
    def __init__(
        self,
        redis: RedisClient,
        hops: HopStore,
        *,
        retry_budget: float,
        carcel_retention_ms: int,
        reads: SharedReads | None = None,
        note_queues: Callable[[Sequence[str]], Awaitable[None]] | None = None,
    ) -> None:
        self._redis = redis
        self._reads = reads or SharedReads(redis)
        self._hops = hops
        # Puts a posted-to queue in the queue index (PacketStore.note_queues), where
        # /metrics finds queues. After the post's script, not in it: the index is in
        # a slot of its own, and a script touches one hash tag's keys (Redis Cluster).
        self._note_queues = note_queues
        self._retry_budget = retry_budget
        self._carcel_retention_ms = carcel_retention_ms

    @property
    def redis(self) -> RedisClient:
        """The store's client (ListTaskQueues reads the queue index with it)."""
        return self._redis

    @property
    def retry_budget(self) -> float:
        """Seconds a read or write may take, retries included (ServerConfig)."""
        return self._retry_budget

    async def retried(self, operation: Any) -> Any:
        """`operation` run with the store's retries (_retry.with_retries)."""
        return await with_retries(operation, budget_seconds=self._retry_budget)

    async def post(
        self,
        queue: str,
        task_id: str,
        write: PacketWrite,
        *,
        priority: int,
        capability: str,
        max_attempts: int,
        expires_at_ms: int,
    ) -> str:
        """ "new", "dup" (posted before, same packet) or "conflict" (the id is taken)."""

        async def attempt() -> str:
            reply = await _scripts.TASK_POST.run(
                self._redis,
                [
                    _keys.task_index(queue),
                    _keys.task_events(queue),
                    _keys.task(queue, task_id),
                    _keys.task_ready(queue, capability),
                ],
                [
                    _keys.queue_prefix(queue),
                    task_id,
                    write.fingerprint,
                    write.payload,
                    write.content_length,
                    write.tracking_id,
                    priority,
                    capability,
                    max_attempts,
                    expires_at_ms,
                ],
            )
            return text(reply[0])

        outcome: str = await self.retried(attempt)
        if self._note_queues is not None:
            await self._note_queues([queue])
        return outcome

    async def claim(
        self,
        queue: str,
        worker: str,
        capabilities: Sequence[str],
        lease_ms: int,
        *,
        request_id: str = "",
    ) -> Claimed | str:
        """Claim the best claimable task for `worker`. With a `request_id`, a claim made
        before for it that still holds is returned again (`again`), so retrying this
        call after a lost reply is safe. Returns the worker whose claim the request
        id names when it is another's."""
        # Without one (a client that sets none), a request id of this call's own: the
        # store retries below must not claim a second task when a reply was lost.
        request_id = request_id or f"server:{uuid.uuid4().hex}"

        async def attempt() -> Claimed | str:
            reply = await _scripts.TASK_CLAIM.run(
                self._redis,
                [
                    _keys.task_index(queue),
                    _keys.task_leases(queue),
                    _keys.task_events(queue),
                    _keys.carcel(queue),
                ],
                [
                    _keys.queue_prefix(queue),
                    worker,
                    lease_ms,
                    request_id,
                    self._carcel_retention_ms,
                    *capabilities,
                ],
            )
            outcome = text(reply[0])
            if outcome == "taken":
                return text(reply[1])
            flat = reply[1]
            raw = {bytes(flat[j]): bytes(flat[j + 1]) for j in range(0, len(flat), 2)}
            record = TaskRecord(text(raw[b"rk"]).split(":", 2)[2], raw, []) if raw else None
            return Claimed(record, outcome == "again", tuple(text(t) for t in reply[2]))

        claimed: Claimed | str = await self.retried(attempt)
        if isinstance(claimed, str) or claimed.record is None:
            return claimed
        record = claimed.record
        [hops] = await self._hops.read(queue, [record.text("i")])
        return Claimed(
            TaskRecord(record.task_id, record.fields, hops), claimed.again, claimed.carceled
        )

    async def expire(self, queue: str) -> list[str]:
        """Count the queue's leases that ran out as failed attempts (back in the queue,
        or to the carcel after the last); returns the ids of the tasks whose
        "carceled" hop is pending. One try, not retried: redis's own errors are raised
        as they come (its caller, a read, can do without the count)."""

        async def attempt() -> list[str]:
            reply = await _scripts.TASK_EXPIRE.run(
                self._redis,
                [_keys.task_leases(queue), _keys.task_events(queue), _keys.carcel(queue)],
                [_keys.queue_prefix(queue), self._carcel_retention_ms],
            )
            return [text(t) for t in reply]

        return await attempt()

    async def carcel_hops_done(self, queue: str, task_ids: Sequence[str]) -> None:
        """Tasks whose "carceled" hop is appended (or no longer due): off the pending set."""

        async def attempt() -> None:
            await self._redis.srem(_keys.task_carcel_hops(queue), *task_ids)

        await self.retried(attempt)

    async def get_many(self, queue: str, task_ids: Sequence[str]) -> list[TaskRecord | None]:
        async def attempt() -> list[dict[bytes, bytes]]:
            pipe = self._redis.pipeline(transaction=False)
            for task_id in task_ids:
                pipe.hgetall(_keys.task(queue, task_id))
            return list(await pipe.execute())

        found: list[dict[bytes, bytes]] = await self.retried(attempt)
        present = [f for f in found if f]
        hops = await self._hops.read(queue, [text(f[b"i"]) for f in present])
        by_hops = iter(hops)
        return [
            TaskRecord(task_id, f, next(by_hops)) if f else None
            for task_id, f in zip(task_ids, found, strict=True)
        ]

    async def task_page(
        self, queue: str, after: tuple[int, str] | None, count: int
    ) -> list[tuple[int, str]]:
        """Up to `count` (index score, task id) of the queue's index, in its order
        (posted first first, see lib/order.lua; ties, from before unique scores,
        by id), after `after` (None: from the first)."""
        low, skip = (after[0], after) if after is not None else (0, None)

        async def attempt() -> list[tuple[int, str]]:
            out: list[tuple[int, str]] = []
            offset = 0
            while len(out) < count:
                rows: Any = await self._redis.zrangebyscore(
                    _keys.task_index(queue), low, "+inf", start=offset, num=count, withscores=True
                )
                if not rows:
                    break
                offset += len(rows)
                # Those with `after`'s score and up to it came before.
                out += [
                    row
                    for row in ((int(score), text(member)) for member, score in rows)
                    if skip is None or row > skip
                ]
            return out[:count]

        found: list[tuple[int, str]] = await self.retried(attempt)
        return found

    async def results(
        self, queue: str, task_id: str, start: int = 0, count: int = 0
    ) -> list[bytes]:
        """The task's results from offset `start` on, `count` of them (0: all)."""

        async def attempt() -> list[bytes]:
            raw: Any = await self._redis.lrange(
                _keys.task_results(queue, task_id), start, start + count - 1 if count else -1
            )
            return [bytes(r) for r in raw]

        found: list[bytes] = await self.retried(attempt)
        return found

    async def settle(
        self,
        queue: str,
        task_id: str,
        tracking_id: str,
        *,
        kind: str,
        fence: int,
        expected_hops: int = 0,
        entry: bytes = b"",
        entry_hash: bytes = b"",
        argument: str | int = "",
        result: bytes = b"",
        digest: str = "-",
        asker: str = "",
    ) -> Settled:
        """Settle (scripts/task_settle.lua). `digest`: what the caller asked, as hex
        without its time, and `asker` the class of request (complete, fail, release
        or server), so a replay of this settlement (the same fence, class and digest)
        answers "again" with its first outcome."""

        async def attempt() -> Settled:
            reply = await _scripts.TASK_SETTLE.run(
                self._redis,
                [
                    _keys.task_leases(queue),
                    _keys.task_events(queue),
                    _keys.carcel(queue),
                    _keys.custody_hops(queue, tracking_id),
                ],
                [
                    _keys.queue_prefix(queue),
                    task_id,
                    kind,
                    fence,
                    expected_hops,
                    entry,
                    entry_hash,
                    argument,
                    result,
                    self._carcel_retention_ms,
                    digest,
                    asker,
                ],
            )
            return Settled(
                text(reply[0]),
                text(reply[1]),
                bytes(reply[2]),
                tuple(text(t) for t in reply[3]),
            )

        settled: Settled = await self.retried(attempt)
        return settled

    async def events(self, queue: str, after: str, block_ms: int) -> tuple[str, list[Any]]:
        """Status events after `after` ("$": from now), waiting up to `block_ms`."""

        async def attempt() -> tuple[str, list[Any]]:
            reply: Any = await self._reads.xread(
                {_keys.task_events(queue): after}, count=500, block_ms=block_ms
            )
            if not reply:
                return after, []
            entries = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))[0]
            return text(entries[-1][0]), list(entries)

        result: tuple[str, list[Any]] = await with_retries(
            attempt, budget_seconds=self._retry_budget + block_ms / 1000
        )
        return result

    async def last_event(self, queue: str) -> str:
        async def attempt() -> str:
            newest: Any = await self._redis.xrevrange(_keys.task_events(queue), count=1)
            return text(newest[0][0]) if newest else "0-0"

        found: str = await self.retried(attempt)
        return found

    async def events_lost_after(self, queue: str, cursor: str) -> bool:
        """Whether retention removed events of `queue` after `cursor` ("<ms>-<seq>").

        As for agents' watch: true when events were removed and the oldest kept is
        newer than the cursor (at the very edge, the cursor was the last one removed
        and nothing is lost: told all the same, never skipped silently). A log gone
        whole (it expires with the queue's newest task) is not told, as for agents'
        and context watches."""
        key = _keys.task_events(queue)

        async def attempt() -> bool:
            if not await self._redis.exists(key):
                return False
            info: Any = await self._redis.xinfo_stream(key)
            if int(info["entries-added"]) <= int(info["length"]):
                return False
            return cursor_order(text(info["recorded-first-entry-id"])) > cursor_order(cursor)

        lost: bool = await self.retried(attempt)
        return lost

    async def held(self, queue: str, worker: str) -> list[tuple[str, int]]:
        """The tasks of `queue` that `worker` holds, with their fencing tokens."""

        async def attempt() -> list[tuple[str, int]]:
            reply = await _scripts.TASK_HELD.run(
                self._redis,
                [_keys.task_leases(queue)],
                [_keys.queue_prefix(queue), worker, _MAX_LEASES_SCANNED],
            )
            return [(text(reply[j]), int(reply[j + 1])) for j in range(0, len(reply), 2)]

        found: list[tuple[str, int]] = await self.retried(attempt)
        return found
