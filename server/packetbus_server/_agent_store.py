"""Storage for the agent registry: register, heartbeat, deregister, sweep, read, watch.

Every key carries the hash tag ``{agents}`` (scripts/lib/agents.lua lists them),
so each script runs on one slot of a Redis Cluster.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import _keys, _scripts
from ._limits import Limits
from ._replies import names, text
from ._retry import with_retries
from ._scripts import RedisClient
from ._waits import SharedReads

Fields = dict[bytes, bytes]
# The queues one agent is noted to claim from; beyond it, its tasks there come
# back when their leases run out instead.
MAX_QUEUES_PER_AGENT = 1000


def _flat(reply: Sequence[Any]) -> Fields:
    return {bytes(reply[j]): bytes(reply[j + 1]) for j in range(0, len(reply), 2)}


@dataclass(frozen=True, slots=True)
class Registered:
    outcome: str  # new | updated | full | no_parent | cycle
    fields: Fields


@dataclass(frozen=True, slots=True)
class Unchecked:
    """A cascading deregistration found a descendant its caller did not check."""

    agent_id: str


@dataclass(frozen=True, slots=True)
class Sweep:
    stale: list[str]
    left: list[str]
    # Agents whose claimed tasks are still to be released: (id, mark ms).
    releasing: list[tuple[str, int]]


class AgentStore:
    def __init__(
        self,
        redis: RedisClient,
        limits: Limits,
        *,
        retry_budget: float,
        reads: SharedReads | None = None,
    ) -> None:
        self._redis = redis
        self._reads = reads or SharedReads(redis)
        self._limits = limits
        self._retry_budget = retry_budget
        self._keys = [
            _keys.AGENT_IDS,
            _keys.AGENT_DEADLINES,
            _keys.AGENT_EVENTS,
            _keys.AGENTS_RELEASING,
        ]

    async def _retried(self, operation: Any, budget: float | None = None) -> Any:
        return await with_retries(operation, budget_seconds=budget or self._retry_budget)

    def _common_args(self) -> list[Any]:
        return [
            _keys.AGENTS_PREFIX,
            self._limits.max_agent_events,
            self._limits.agent_event_retention_seconds * 1000,
        ]

    async def _run(self, script: _scripts.LuaScript, args: list[Any]) -> Any:
        return await self._retried(
            lambda: script.run(self._redis, self._keys, self._common_args() + args)
        )

    async def register(
        self,
        agent_id: str,
        spec: bytes,
        *,
        parent: str,
        state: str,
        ttl_ms: int,
        fingerprint: str,
    ) -> Registered:
        reply = await self._run(
            _scripts.AGENT_REGISTER,
            [agent_id, spec, parent, state, ttl_ms, fingerprint, self._limits.max_agents],
        )
        return Registered(text(reply[0]), _flat(reply[1:]))

    async def heartbeat(self, agent_id: str, state: str | None) -> Fields | None:
        reply = await self._run(
            _scripts.AGENT_HEARTBEAT,
            [agent_id, "0" if state is None else "1", state or ""],
        )
        return _flat(reply) if reply else None

    async def deregister(
        self, agent_id: str, *, cascade: bool, checked: Sequence[str] | None = None
    ) -> list[str] | Unchecked:
        """Remove `agent_id` (and with `cascade` its descendants): the ids removed, the
        one asked for first, or [] when it is not registered. A store retry after a
        lost reply answers what the first run removed (the call's id keys it).
        `checked`: with cascade, the only descendants it may remove (the caller's
        right to each was checked); one more found: `Unchecked` (nothing removed)."""
        call_id = uuid.uuid4().hex
        only = "" if checked is None else "1"
        reply = await self._run(
            _scripts.AGENT_DEREGISTER,
            [agent_id, "1" if cascade else "0", call_id, only, "\n".join(checked or ())],
        )
        if reply and isinstance(reply[0], list):
            return Unchecked(text(reply[0][1]))
        return [text(r) for r in reply]

    async def sweep(self, limit: int) -> Sweep:
        reply = await self._run(_scripts.AGENT_REAP, [limit])
        stale, left, marks = reply
        return Sweep(
            [text(r) for r in stale],
            [text(r) for r in left],
            [(text(marks[j]), int(float(marks[j + 1]))) for j in range(0, len(marks), 2)],
        )

    async def note_claim(self, agent_id: str, queue: str) -> None:
        await self._retried(
            lambda: _scripts.AGENT_CLAIMED.run(
                self._redis,
                [_keys.agent(agent_id), _keys.agent_queues(agent_id)],
                [queue, MAX_QUEUES_PER_AGENT],
            )
        )

    async def claimed_queues(self, agent_id: str) -> tuple[str, list[str]]:
        """The agent's liveness ("" when no longer registered) and the queues it claimed from."""

        async def attempt() -> tuple[str, list[str]]:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hget(_keys.agent(agent_id), "lv")
            pipe.smembers(_keys.agent_queues(agent_id))
            liveness, queues = await pipe.execute()
            return text(liveness or b""), sorted(text(q) for q in queues)

        found: tuple[str, list[str]] = await self._retried(attempt)
        return found

    async def released(self, agent_id: str, mark: int) -> None:
        await self._retried(
            lambda: _scripts.AGENT_RELEASED.run(
                self._redis,
                [
                    _keys.AGENTS_RELEASING,
                    _keys.agent(agent_id),
                    _keys.agent_queues(agent_id),
                ],
                [agent_id, mark],
            )
        )

    async def get_many(self, agent_ids: Sequence[str]) -> list[Fields | None]:
        if not agent_ids:
            return []

        async def attempt() -> list[Fields]:
            pipe = self._redis.pipeline(transaction=False)
            for agent_id in agent_ids:
                pipe.hgetall(_keys.agent(agent_id))
            return list(await pipe.execute())

        found: list[Fields] = await self._retried(attempt)
        return [f or None for f in found]

    async def ids_after(self, after: str, count: int) -> tuple[list[str], int]:
        """Registered ids after `after` ("" for the first), in id order, of the next
        `count` members of the registry, and how many members were read: a member
        that is not UTF-8 is no id a server registered (a stray), left out
        (_replies.name) but read, so a short read still means the end."""

        async def attempt() -> tuple[list[str], int]:
            start = f"({after}" if after else "-"
            raw: Any = await self._redis.zrangebylex(_keys.AGENT_IDS, start, "+", 0, count)
            return names(raw), len(raw)

        found: tuple[list[str], int] = await self._retried(attempt)
        return found

    async def children(self, parent: str) -> list[str]:
        async def attempt() -> list[str]:
            raw: Any = await self._redis.smembers(_keys.agent_children(parent))
            return sorted(names(raw))  # a stray member (not UTF-8) is no child

        ids: list[str] = await self._retried(attempt)
        return ids

    async def events(self, after: str, block_ms: int) -> tuple[str, list[Any]]:
        """Membership events after `after`, waiting up to `block_ms` for some."""

        async def attempt() -> tuple[str, list[Any]]:
            reply: Any = await self._reads.xread(
                {_keys.AGENT_EVENTS: after}, count=500, block_ms=block_ms
            )
            if not reply:
                return after, []
            entries = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))[0]
            return text(entries[-1][0]), list(entries)

        result: tuple[str, list[Any]] = await self._retried(
            attempt, self._retry_budget + block_ms / 1000
        )
        return result

    async def last_event(self) -> str:
        async def attempt() -> str:
            newest: Any = await self._redis.xrevrange(_keys.AGENT_EVENTS, count=1)
            return text(newest[0][0]) if newest else "0-0"

        found: str = await self._retried(attempt)
        return found

    async def first_kept(self) -> str:
        """The oldest event still kept once retention has removed some ("0-0" while it
        has removed none, or the stream is gone)."""

        async def attempt() -> str:
            if not await self._redis.exists(_keys.AGENT_EVENTS):
                return "0-0"
            info: Any = await self._redis.xinfo_stream(_keys.AGENT_EVENTS)
            if int(info["entries-added"]) <= int(info["length"]):
                return "0-0"
            return text(info["recorded-first-entry-id"])

        found: str = await self._retried(attempt)
        return found

    async def agent_key_ids(self, agent_id: str) -> list[str]:
        """The ids of the keys registered for an agent (pb:{keys}:agents)."""

        async def attempt() -> list[str]:
            raw: Any = await self._redis.hget(_keys.AGENT_KEYS, agent_id)
            return text(raw).split() if raw else []

        found: list[str] = await self._retried(attempt)
        return found
