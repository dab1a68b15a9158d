"""On a Redis Cluster: a dispatch's tracking ids claimed for their topics before the
dispatch script runs, by one pipeline (claim_tracking_ids), and the idempotency
records looked at when a placed id's location names the write's own topic
(records_exist).

Apart from PacketStore (_store) because on a single Redis scripts/dispatch.lua does
all of this itself: these are only the cluster's way, where the location
(``pb:loc:{<tid>}``) and place (``pb:place:{<tid>}``) keys live in other slots than
the topic's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import _keys
from ._packet_writes import PacketWrite
from ._replies import text
from ._scripts import RedisClient

# claim_tracking_ids's answer for a placed tracking id whose location names the write's topic.
PLACED_BUT_OURS = object()


async def claim_tracking_ids(redis: RedisClient, writes: Sequence[PacketWrite]) -> list[Any]:
    """On a cluster: claim each write's tracking id for its topic; per write,
    None (claimed now), the owning topic, or "" (a task, finding or record
    holds it, _placed_packets: nothing claimed). Raises the store's errors.

    One pipeline, as cheap as the claim alone: per id SET NX GET of its location
    and EXISTS of its place (not one script per id: redis-py refuses EVALSHA in
    a cluster pipeline, and a call per id costs a round trip each). A placed id
    this call claimed is given back (DEL) and refused; one whose location names
    the write's topic is PLACED_BUT_OURS, for the caller to look at its record.
    A post noting its place at the same moment is the race a post already has
    between its own check and note (_placed_packets)."""
    pipe = redis.pipeline(transaction=False)
    for w in writes:
        pipe.set(_keys.packet_location(w.tracking_id), w.topic, nx=True, px=w.ttl_ms, get=True)
        pipe.exists(_keys.packet_place(w.tracking_id))
    replies = list(await pipe.execute())
    claimed: list[Any] = []
    given_back: list[str] = []
    for i, w in enumerate(writes):
        owner, placed = replies[2 * i], replies[2 * i + 1]
        if placed and owner is None:
            given_back.append(_keys.packet_location(w.tracking_id))
            claimed.append("")
        elif placed and text(owner) == w.topic:
            # Stored before the place was noted, or claimed a moment ago by
            # another dispatch of it that is giving it back: the caller looks.
            claimed.append(PLACED_BUT_OURS)
        else:
            claimed.append(owner)
    if given_back:
        undo = redis.pipeline(transaction=False)
        for key in given_back:
            undo.delete(key)
        await undo.execute()
    return claimed


async def records_exist(redis: RedisClient, writes: Sequence[PacketWrite]) -> list[bool]:
    """On a cluster: whether each write's packet has its idempotency record (it was
    stored), read in one pipeline."""
    pipe = redis.pipeline(transaction=False)
    for w in writes:
        pipe.exists(_keys.packet_record(w.topic, w.tracking_id))
    return [bool(n) for n in await pipe.execute()]
