"""Storage for task queues: post, claim, settle, read, watch (scripts/task_*.lua).

A queue's keys all carry the queue's hash tag; the per-task ones are derived
inside the scripts from the prefix ``pb:{queue}:`` (see scripts/lib/tasks.lua).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import _keys, _scripts
from ._hop_store import HopStore
from ._replies import text
from ._retry import with_retries
from ._scripts import RedisClient
from ._store import PacketWrite

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
    outcome: str  # ok | gone | stale_fence | stale
    value: str = ""
    extra: bytes = b""


class TaskStore:
    def __init__(
        self,
        redis: RedisClient,
        hops: HopStore,
        *,
        retry_budget: float,
        carcel_retention_ms: int,
    ) -> None:
        self._redis = redis
        self._hops = hops
        self._retry_budget = retry_budget
        self._carcel_retention_ms = carcel_retention_ms

    async def _retried(self, operation: Any) -> Any:
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
                [_keys.task_index(queue), _keys.task_events(queue)],
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

        outcome: str = await self._retried(attempt)
        return outcome

    async def claim(
        self, queue: str, worker: str, capabilities: Sequence[str], lease_ms: int
    ) -> TaskRecord | None:
        async def attempt() -> dict[bytes, bytes]:
            reply = await _scripts.TASK_CLAIM.run(
                self._redis,
                [_keys.task_index(queue), _keys.task_leases(queue), _keys.task_events(queue)],
                [_keys.queue_prefix(queue), worker, lease_ms, *capabilities],
            )
            return {bytes(reply[j]): bytes(reply[j + 1]) for j in range(0, len(reply), 2)}

        raw: dict[bytes, bytes] = await self._retried(attempt)
        if not raw:
            return None
        task_id = text(raw[b"rk"]).split(":", 2)[2]
        [hops] = await self._hops.read(queue, [text(raw[b"i"])])
        return TaskRecord(task_id, raw, hops)

    async def get_many(self, queue: str, task_ids: Sequence[str]) -> list[TaskRecord | None]:
        async def attempt() -> list[dict[bytes, bytes]]:
            pipe = self._redis.pipeline(transaction=False)
            for task_id in task_ids:
                pipe.hgetall(_keys.task(queue, task_id))
            return list(await pipe.execute())

        found: list[dict[bytes, bytes]] = await self._retried(attempt)
        present = [f for f in found if f]
        hops = await self._hops.read(queue, [text(f[b"i"]) for f in present])
        by_hops = iter(hops)
        return [
            TaskRecord(task_id, f, next(by_hops)) if f else None
            for task_id, f in zip(task_ids, found, strict=True)
        ]

    async def task_ids(self, queue: str, limit: int) -> list[str]:
        async def attempt() -> list[str]:
            raw: Any = await self._redis.zrange(_keys.task_index(queue), 0, limit - 1)
            return [text(t) for t in raw]

        ids: list[str] = await self._retried(attempt)
        return ids

    async def results(self, queue: str, task_id: str) -> list[bytes]:
        async def attempt() -> list[bytes]:
            raw: Any = await self._redis.lrange(_keys.task_results(queue, task_id), 0, -1)
            return [bytes(r) for r in raw]

        found: list[bytes] = await self._retried(attempt)
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
    ) -> Settled:
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
                ],
            )
            return Settled(
                text(reply[0]),
                text(reply[1]) if len(reply) > 1 else "",
                bytes(reply[2]) if len(reply) > 2 else b"",
            )

        settled: Settled = await self._retried(attempt)
        return settled

    async def events(self, queue: str, after: str, block_ms: int) -> tuple[str, list[Any]]:
        """Status events after `after` ("$": from now), waiting up to `block_ms`."""

        async def attempt() -> tuple[str, list[Any]]:
            reply: Any = await self._redis.xread(
                {_keys.task_events(queue): after}, count=500, block=block_ms
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

        found: str = await self._retried(attempt)
        return found

    async def held(self, queue: str, worker: str) -> list[tuple[str, int]]:
        """The tasks of `queue` that `worker` holds, with their fencing tokens."""

        async def attempt() -> list[tuple[str, int]]:
            reply = await _scripts.TASK_HELD.run(
                self._redis,
                [_keys.task_leases(queue)],
                [_keys.queue_prefix(queue), worker, _MAX_LEASES_SCANNED],
            )
            return [(text(reply[j]), int(reply[j + 1])) for j in range(0, len(reply), 2)]

        found: list[tuple[str, int]] = await self._retried(attempt)
        return found
