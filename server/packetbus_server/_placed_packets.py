"""Where a tracking id lives when its packet is not a topic's: a task, a finding or a record.

Tasks, findings and records keep their packets in their own keys (their queue's,
their task's, their kind's hash tag), not in a topic's log, so the packet location
``pb:loc:{<tid>}`` never names them. Each post of one notes its place under
``pb:place:{<tid>}`` (see _keys) once the store has it, so GetPacket and
VerifyCustody answer for any tracking id (issue 17, item 5). The note is its own
command, written after the post's script (one hash tag per script: the note's
slot is the tracking id's), and again on every repeat of the post, so a post
retried after a lost note repairs it; a refused post writes none.

A tracking id names one packet: a post whose tracking id already names a packet of
another place, or a topic's packet, is refused before anything is stored (`taken`),
and a note never replaces another place's (first one wins when two posts race), so
a finding posted under a task's tracking id cannot take that id over in GetPacket
and VerifyCustody. The other way round, a topic Dispatch refuses (ALREADY_EXISTS,
nothing written) a tracking id a note names, unless a topic already holds it (a
retry answers as before): scripts/dispatch.lua on a single Redis,
_cluster_claims.claim_tracking_ids on a cluster; and so does a policy's rejection
or hold of a dispatched packet (scripts/policy_decide.lua; PolicyStore.decide reads the place on a cluster). What is left is a race: a post and a dispatch of the same id at the same
moment (the post's check, the dispatch, then the post's note) both store; GetPacket
then answers the topic's packet.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from packetbus.v1 import packet_service_pb2

from . import _keys
from ._access import Permission
from ._retry import with_retries
from ._scripts import RedisClient
from ._status import abort_with_reason

TASK = "task"
FINDING = "finding"
RECORD = "record"

# The permission that reads each kind, as its own Get call needs it
# (_access/permissions.py RULES: GetTask, GetFinding, GetRecord).
_READ = {
    TASK: Permission.TASKS_READ,
    FINDING: Permission.FINDINGS_READ,
    RECORD: Permission.RECORDS_READ,
}


@dataclass(frozen=True, slots=True)
class Place:
    """A tracking id's packet outside the topics.

    `kind`: TASK, FINDING or RECORD; `resource`: what its read permission is
    granted on (the queue, the task id, the record kind's field name, e.g.
    "session_summary"); `scope` and `item`: its keys' names (queue and task id,
    task id and finding id, key kind and record id)."""

    kind: str
    resource: str
    scope: str
    item: str

    @property
    def permission(self) -> Permission:
        """The permission a caller needs on `resource` to read this packet."""
        return _READ[self.kind]


# Reads one place's packet as it is now (no signed head): None if it is gone.
Loader = Callable[[Place], Awaitable["packet_service_pb2.StoredPacket | None"]]


class PlacedPackets:
    """The places of task, finding and record packets, by tracking id."""

    def __init__(self, redis: RedisClient, *, retry_budget: float) -> None:
        self._redis = redis
        self._retry_budget = retry_budget
        self._loaders: dict[str, Loader] = {}

    def serve(self, kind: str, loader: Loader) -> None:
        """Read the packets of `kind` with `loader` (its service registers it)."""
        self._loaders[kind] = loader

    async def taken(self, tracking_id: str, place: Place) -> bool:
        """True when `tracking_id` already names another packet: a topic's (its
        location, _keys.packet_location) or one at another place than `place`.
        A repeat of the same post is not taken. Raises the store's errors (_retry)."""

        async def attempt() -> Any:
            location = await self._redis.exists(_keys.packet_location(tracking_id))
            noted = await self._redis.get(_keys.packet_place(tracking_id))
            return location, noted

        location, noted = await with_retries(attempt, budget_seconds=self._retry_budget)
        return bool(location) or (noted is not None and _decoded(noted) != _value(place))

    async def refuse_if_taken(
        self, tracking_id: str, place: Place, context: grpc.aio.ServicerContext
    ) -> None:
        """End the call with ALREADY_EXISTS when `tracking_id` is `taken` (a post
        under it would store a packet GetPacket never answers). Call it before the
        post writes anything, within the caller's storage error handling."""
        if await self.taken(tracking_id, place):
            await abort_with_reason(
                context,
                grpc.StatusCode.ALREADY_EXISTS,
                f"tracking id {tracking_id} is another packet's",
                "TRACKING_ID_IN_USE",
            )

    async def note(self, tracking_id: str, place: Place, expires_at_ms: int) -> None:
        """Remember `place` for `tracking_id` until `expires_at_ms` (unix ms, the
        packet's expiry); idempotent, and never over another place's note (the
        first post of a tracking id keeps it). Raises the store's errors (_retry)."""
        key = _keys.packet_place(tracking_id)
        value = _value(place)

        async def attempt() -> Any:
            # SET NX GET: one command that writes only a new note and says what
            # was there; a repeat of the same post then refreshes its expiry.
            earlier = await self._redis.set(key, value, nx=True, get=True, pxat=expires_at_ms)
            if isinstance(earlier, bytes | str) and _decoded(earlier) == value:
                await self._redis.set(key, value, xx=True, pxat=expires_at_ms)

        await with_retries(attempt, budget_seconds=self._retry_budget)

    async def get(self, tracking_id: str) -> tuple[Place, packet_service_pb2.StoredPacket] | None:
        """The place and current packet (chain included, no head) of
        `tracking_id`; None if none is noted or its packet is gone."""

        async def attempt() -> Any:
            return await self._redis.get(_keys.packet_place(tracking_id))

        raw = await with_retries(attempt, budget_seconds=self._retry_budget)
        if raw is None:
            return None
        kind, resource, scope, item = json.loads(_decoded(raw))
        place = Place(kind, resource, scope, item)
        loader = self._loaders.get(kind)
        stored = None if loader is None else await loader(place)
        return None if stored is None else (place, stored)


def _value(place: Place) -> str:
    """The note's stored form: a JSON array of the place's four fields."""
    return json.dumps([place.kind, place.resource, place.scope, place.item])


def _decoded(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw
