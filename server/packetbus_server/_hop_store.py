"""Storage of custody hops after ingest (pb:{topic}:hops:<tracking id>; scripts/lib/hops.lua).

Shared by everything that makes hops: consumer groups, task queues and the carcel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import _keys, _scripts
from ._retry import with_retries
from ._scripts import RedisClient


# Not frozen: made for every packet on the delivery path, where a frozen
# dataclass's __init__ (object.__setattr__ per field) costs four times as much.
@dataclass(slots=True)
class HopWrite:
    tracking_id: str
    # The packet's hops before this one: the place it was signed for.
    expected_hops: int
    entry: bytes
    entry_hash: bytes
    keep_until_ms: int


def hop_entries(fields: dict[bytes, bytes]) -> list[bytes]:
    """A hops hash (HGETALL) as its entries, oldest first."""
    n = int(fields.get(b"n", 0))
    return [bytes(fields[str(j).encode()]) for j in range(1, n + 1)]


class HopStore:
    def __init__(self, redis: RedisClient, *, retry_budget: float) -> None:
        self._redis = redis
        self._retry_budget = retry_budget

    async def read(self, topic: str, tracking_ids: Sequence[str]) -> list[list[bytes]]:
        """Each packet's hop entries, oldest first (one pipelined round trip)."""
        if not tracking_ids:
            return []

        async def attempt() -> list[list[bytes]]:
            pipe = self._redis.pipeline(transaction=False)
            for tid in tracking_ids:
                pipe.hgetall(_keys.custody_hops(topic, tid))
            return [hop_entries(fields) for fields in await pipe.execute()]

        found: list[list[bytes]] = await with_retries(attempt, budget_seconds=self._retry_budget)
        return found

    async def append(self, topic: str, writes: Sequence[HopWrite]) -> list[list[bytes] | None]:
        """Append each hop where it was signed to go. Per write: None when appended, or
        the packet's hops as they are now ([newest hash, entry 1, ..., entry n])."""
        if not writes:
            return []

        async def attempt() -> list[list[bytes] | None]:
            args: list[Any] = []
            for w in writes:
                args += (w.expected_hops, w.entry, w.entry_hash, w.keep_until_ms)
            reply = await _scripts.HOPS_APPEND.run(
                self._redis, [_keys.custody_hops(topic, w.tracking_id) for w in writes], args
            )
            return [[bytes(x) for x in r] if r else None for r in reply]

        result: list[list[bytes] | None] = await with_retries(
            attempt, budget_seconds=self._retry_budget
        )
        return result
