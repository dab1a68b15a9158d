"""Storage of a topic's retention limits (scripts/lib/retention.lua).

The limits live in the topic's horizon hash (``pb:{topic}:horizon``), so the
scripts that append to the log already hold them; see _keys for the fields.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from . import _keys, _scripts
from ._replies import text
from ._retry import with_retries
from ._scripts import RedisClient

# How long a server trusts what it read about a topic's work-queue retention
# before it reads again. Stale only delays the drop: the acked script reads
# what every group acked from the groups themselves, so a later run drops all.
_POLICY_CACHE_SECONDS = 1.0
_MAX_CACHED = 10_000


@dataclass(frozen=True, slots=True)
class Retention:
    max_age_ms: int = 0
    max_packets: int = 0
    max_bytes: int = 0
    work_queue: bool = False


@dataclass(frozen=True, slots=True)
class RetentionState:
    retention: Retention
    packets: int
    stored_bytes: int


class TopicStore:
    def __init__(self, redis: RedisClient, *, retry_budget: float, retention_ms: int) -> None:
        self._redis = redis
        self._retry_budget = retry_budget
        self._retention_ms = retention_ms
        self._work_queue: dict[str, tuple[bool, float]] = {}

    async def set_retention(self, topic: str, retention: Retention) -> int:
        """Store and apply `retention`; the number of packets it removed."""

        async def attempt() -> int:
            reply = await _scripts.TOPIC_RETENTION_SET.run(
                self._redis,
                [_keys.topic_log(topic), _keys.topic_horizon(topic)],
                [
                    retention.max_age_ms,
                    retention.max_packets,
                    retention.max_bytes,
                    1 if retention.work_queue else 0,
                    self._retention_ms,
                ],
            )
            return int(reply)

        removed: int = await with_retries(attempt, budget_seconds=self._retry_budget)
        self._work_queue[topic] = (retention.work_queue, time.monotonic())
        return removed

    async def get_retention(self, topic: str) -> RetentionState:
        async def attempt() -> RetentionState:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hmget(_keys.topic_horizon(topic), ["ma", "mp", "mb", "wq", "sb"])
            pipe.xlen(_keys.topic_log(topic))
            fields, length = await pipe.execute()
            ma, mp, mb, wq, sb = (int(text(f)) if f is not None else 0 for f in fields)
            return RetentionState(Retention(ma, mp, mb, wq == 1), int(length), sb if length else 0)

        state: RetentionState = await with_retries(attempt, budget_seconds=self._retry_budget)
        return state

    async def after_acks(self, topic: str) -> int:
        """Work-queue retention after acks: drop what every group acked; how many went."""
        cached = self._work_queue.get(topic)
        if (
            cached is not None
            and not cached[0]
            and time.monotonic() - cached[1] < _POLICY_CACHE_SECONDS
        ):
            # The common case, on every settlement: no store call, no retry wrapper.
            return 0

        async def attempt() -> int:
            # One call: the script reads the policy itself, and says when there is none.
            return int(
                await _scripts.TOPIC_RETENTION_ACKED.run(
                    self._redis, [_keys.topic_log(topic), _keys.topic_horizon(topic)], []
                )
            )

        reply: int = await with_retries(attempt, budget_seconds=self._retry_budget)
        if len(self._work_queue) > _MAX_CACHED:
            self._work_queue.clear()
        self._work_queue[topic] = (reply >= 0, time.monotonic())
        return max(reply, 0)
