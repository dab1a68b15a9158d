"""Storage for findings, per task (scripts/finding_post.lua)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import _keys, _scripts
from ._conflicts import Fact
from ._replies import text
from ._retry import with_retries
from ._scripts import RedisClient


@dataclass(frozen=True, slots=True)
class StoredFinding:
    finding_id: str
    payload: bytes
    content_length: int


def _finding(finding_id: str, raw: bytes) -> StoredFinding:
    return StoredFinding(finding_id, bytes(raw[8:]), int(raw[:8]))


class FindingStore:
    def __init__(self, redis: RedisClient, *, retry_budget: float) -> None:
        self._redis = redis
        self._retry_budget = retry_budget

    async def _retried(self, operation: Any) -> Any:
        return await with_retries(operation, budget_seconds=self._retry_budget)

    async def post(
        self,
        task_id: str,
        fact: Fact,
        payload: bytes,
        content_length: int,
        expires_at_ms: int,
    ) -> tuple[str, list[Fact]]:
        """("new" | "dup" | "conflict", the task's findings posted before this one)."""

        async def attempt() -> tuple[str, list[Fact]]:
            reply = await _scripts.FINDING_POST.run(
                self._redis,
                [
                    _keys.task_findings(task_id),
                    _keys.task_finding_facts(task_id),
                    _keys.task_finding_order(task_id),
                ],
                [
                    fact.finding_id,
                    fact.line(),
                    b"%08d%s" % (content_length, payload),
                    expires_at_ms,
                ],
            )
            status, rest = text(reply[0]), reply[1:]
            earlier = [Fact.parse(text(rest[j]), text(rest[j + 1])) for j in range(0, len(rest), 2)]
            return status, earlier

        result: tuple[str, list[Fact]] = await self._retried(attempt)
        return result

    async def page(
        self, task_id: str, start: int, count: int
    ) -> tuple[list[tuple[int, StoredFinding]], int]:
        """The findings at offsets `start`.. `start + count - 1` of the task's posting
        order, with their offsets (missing ones left out); and the offset after the
        last one read (`start` when none are left)."""

        async def attempt() -> tuple[list[tuple[int, StoredFinding]], int]:
            ids: Any = await self._redis.lrange(
                _keys.task_finding_order(task_id), start, start + count - 1
            )
            if not ids:
                return [], start
            raws: Any = await self._redis.hmget(_keys.task_findings(task_id), ids)
            found = [
                (start + k, _finding(text(i), r))
                for k, (i, r) in enumerate(zip(ids, raws, strict=True))
                if r is not None
            ]
            return found, start + len(ids)

        result: tuple[list[tuple[int, StoredFinding]], int] = await self._retried(attempt)
        return result

    async def facts(self, task_id: str) -> list[Fact]:
        """Every finding's fact, first posted first."""

        async def attempt() -> list[Fact]:
            pipe = self._redis.pipeline(transaction=False)
            pipe.lrange(_keys.task_finding_order(task_id), 0, -1)
            pipe.hgetall(_keys.task_finding_facts(task_id))
            order, facts = await pipe.execute()
            return [Fact.parse(text(i), text(facts[i])) for i in order if i in facts]

        result: list[Fact] = await self._retried(attempt)
        return result

    async def get(self, task_id: str, finding_ids: list[str] | None = None) -> list[StoredFinding]:
        """These findings (all, first posted first, when `finding_ids` is None); missing
        ones are left out."""

        async def attempt() -> list[StoredFinding]:
            key = _keys.task_findings(task_id)
            ids: list[Any] = (
                finding_ids
                if finding_ids is not None
                else await self._redis.lrange(_keys.task_finding_order(task_id), 0, -1)
            )
            if not ids:
                return []
            raws: Any = await self._redis.hmget(key, ids)
            return [_finding(text(i), r) for i, r in zip(ids, raws, strict=True) if r is not None]

        result: list[StoredFinding] = await self._retried(attempt)
        return result
