"""A packet ready to store and what storing it did: the write side of a dispatch.

`PacketWrite` is made at ingest (_ingest, _admission) for every accepted packet,
`dispatch_argument` is its form as an argument of scripts/dispatch.lua, and
`WriteResult` / `Outcome` are the script's answer per packet. Apart from the store
(_store) so the modules that build writes (ingest, governance, tasks, sealed
batches) need not import the store itself.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Outcome(enum.Enum):
    STORED = "new"
    DUPLICATE = "dup"
    CONFLICT = "conflict"


# The dispatch script's status replies, as redis-py gives them (bytes, or str
# under RESP3 decoding): a dict lookup per packet instead of an Enum call.
OUTCOMES: dict[bytes | str, Outcome] = {
    **{o.value: o for o in Outcome},
    **{o.value.encode(): o for o in Outcome},
}


# Not frozen (PacketWrite, WriteResult): made for every packet at ingest, where a
# frozen dataclass's __init__ (object.__setattr__ per field) costs about twice as
# much (issue 16). Nothing changes them after they are made.
@dataclass(slots=True)
class PacketWrite:
    """A validated packet, ready to store."""

    tracking_id: str
    topic: str
    fingerprint: str
    ttl_ms: int
    # The serialized packet: its content (the packet without its chain of
    # custody), then the chain; the first content_length bytes are the content.
    payload: bytes
    content_length: int
    # The stored-once form (_batch_refs): payload holds content and the client's
    # chain only; the server's ingest entries are leaf `leaf` of sealed batch
    # `batch` (encoded), stored once per topic as pb:{topic}:batch:<batch_id>.
    batch_id: str = ""
    batch: bytes = b""
    leaf: int = 0


def dispatch_argument(w: PacketWrite) -> bytes:
    """Packet `w` as one argument of scripts/dispatch.lua: fingerprint (32 bytes, raw
    as the idempotency record keeps it: scripts/lib/records.lua), TTL, content length
    and tracking id as a fixed-width header, then the packet bytes."""
    return b"%s%012d%08d%s%s" % (
        bytes.fromhex(w.fingerprint),
        w.ttl_ms,
        w.content_length,
        w.tracking_id.encode(),
        w.payload,
    )


@dataclass(slots=True)
class WriteResult:
    outcome: Outcome
    cursor: str
    expires_at_ms: int
