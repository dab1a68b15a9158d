"""Storage for swarm records, per kind (scripts/record_put.lua)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import _keys, _scripts
from ._replies import text
from ._retry import with_retries
from ._scripts import RedisClient


@dataclass(frozen=True, slots=True)
class StoredRecord:
    record_id: str
    payload: bytes
    content_length: int


def _record(record_id: str, raw: bytes) -> StoredRecord:
    return StoredRecord(record_id, bytes(raw[8:]), int(raw[:8]))


class RecordStore:
    def __init__(self, redis: RedisClient, *, retry_budget: float) -> None:
        self._redis = redis
        self._retry_budget = retry_budget

    async def _retried(self, operation: Any) -> Any:
        return await with_retries(operation, budget_seconds=self._retry_budget)

    async def put(
        self,
        kind: str,
        record_id: str,
        fingerprint: str,
        payload: bytes,
        content_length: int,
        *,
        now_ms: int,
        expires_ms: int,
    ) -> tuple[str, StoredRecord | None]:
        """("new" | "dup" | "conflict", the stored record on "dup")."""

        async def attempt() -> tuple[str, StoredRecord | None]:
            reply = await _scripts.RECORD_PUT.run(
                self._redis,
                [
                    _keys.record(kind, record_id),
                    _keys.record_fingerprint(kind, record_id),
                    _keys.record_index(kind),
                ],
                [
                    record_id,
                    fingerprint,
                    b"%08d%s" % (content_length, payload),
                    now_ms,
                    expires_ms,
                ],
            )
            status = text(reply[0])
            stored = _record(record_id, reply[1]) if status == "dup" else None
            return status, stored

        result: tuple[str, StoredRecord | None] = await self._retried(attempt)
        return result

    async def get(self, kind: str, record_id: str) -> StoredRecord | None:
        raw: Any = await self._retried(lambda: self._redis.get(_keys.record(kind, record_id)))
        return None if raw is None else _record(record_id, raw)

    async def page(self, kind: str, before: str, count: int) -> tuple[list[StoredRecord], str]:
        """Up to `count` live records, newest first, stored before the token `before`
        ("<order>:<id>", "" for the newest); and the next token ("" when done).

        Each record's index score is unique (record_put.lua), so a page starts
        exactly after the last one's score, whatever was stored in the same ms."""
        index = _keys.record_index(kind)
        found: list[StoredRecord] = []
        high = f"({before.partition(':')[0]}" if before else "+inf"
        token = before
        while len(found) < count:
            wanted = count - len(found)
            rows: Any = await self._retried(
                lambda high=high, num=wanted: self._redis.zrevrangebyscore(
                    index, high, "-inf", start=0, num=num, withscores=True
                )
            )
            if not rows:
                return found, ""
            raws: Any = await self._retried(
                lambda rows=rows: self._redis.mget([_keys.record(kind, text(r)) for r, _ in rows])
            )
            gone = [r for (r, _), raw in zip(rows, raws, strict=True) if raw is None]
            if gone:  # expired records leave the index too
                await self._retried(lambda gone=gone: self._redis.zrem(index, *gone))
            found += [_record(text(r), raw) for (r, _), raw in zip(rows, raws, strict=True) if raw]
            last, score = rows[-1]
            token = f"{int(score)}:{text(last)}"
            high = f"({int(score)}"
        return found, token

    async def oldest_after(
        self, kind: str, score: int | None, count: int
    ) -> tuple[list[tuple[int, StoredRecord]], int | None]:
        """Up to `count` index entries of `kind` scored after `score` (None: from the
        first), oldest first: the live records among them with their scores, and the
        last entry's score (None when there are none: the end). An expired record is
        left out (and leaves the index, as in `page`)."""
        index = _keys.record_index(kind)
        low = f"({score}" if score is not None else "-inf"
        rows: Any = await self._retried(
            lambda: self._redis.zrangebyscore(
                index, low, "+inf", start=0, num=count, withscores=True
            )
        )
        if not rows:
            return [], None
        raws: Any = await self._retried(
            lambda: self._redis.mget([_keys.record(kind, text(r)) for r, _ in rows])
        )
        gone = [r for (r, _), raw in zip(rows, raws, strict=True) if raw is None]
        if gone:
            await self._retried(lambda: self._redis.zrem(index, *gone))
        found = [
            (int(at), _record(text(r), raw))
            for (r, at), raw in zip(rows, raws, strict=True)
            if raw is not None
        ]
        return found, int(rows[-1][1])
