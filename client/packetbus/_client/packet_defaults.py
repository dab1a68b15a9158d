"""What a sender may leave out of a packet, filled in (and signed) before it is sent."""

from __future__ import annotations

import time
import uuid

from packetbus.v1 import packet_pb2

from .. import _custody
from .._config import AgentIdentity

DEFAULT_SCHEMA_VERSION = "1.0"
# The server's default; a signed packet carries it explicitly.
DEFAULT_TTL_SECONDS = 3600


def tracked(packet: packet_pb2.Packet) -> packet_pb2.Packet:
    # A producer span names the packet's tracking id, so it is filled first.
    if not packet.tracking_id:
        packet.tracking_id = str(uuid.uuid4())
    return packet


def fill_defaults(
    packet: packet_pb2.Packet, identity: AgentIdentity | None = None
) -> packet_pb2.Packet:
    """Fill what a sender may leave out, in place: tracking id, schema version, dispatch time.

    With an `identity`, a packet from that agent (or with no origin yet) that
    has no chain of custody is also signed: schema "1.1", with the agent's
    "originated" entry over the complete packet (so its TTL is filled too).
    Done once, before the first attempt, so every retry sends the same packet
    and the server recognizes it as the same.
    """
    if not packet.tracking_id:
        packet.tracking_id = str(uuid.uuid4())
    if not packet.HasField("dispatched_at"):
        # Not GetCurrentTime(): it goes through datetime and calendar.timegm,
        # ~4 us against ~1 us, on every dispatch().
        packet.dispatched_at.FromNanoseconds(time.time_ns())
    signs = (
        identity is not None
        and not packet.chain_of_custody
        and packet.origin in ("", identity.agent_id)
    )
    if signs and identity is not None:
        packet.origin = identity.agent_id
        sign_as(packet, identity)
    elif not packet.schema_version:
        packet.schema_version = DEFAULT_SCHEMA_VERSION
    return packet


def sign_as(packet: packet_pb2.Packet, identity: AgentIdentity) -> packet_pb2.Packet:
    """Sign `packet`'s origin with `identity`, whatever its origin says (a packet that
    claims another agent's origin is the server's to refuse, PERMISSION_DENIED)."""
    if not packet.ttl_seconds:
        packet.ttl_seconds = DEFAULT_TTL_SECONDS
    return _custody.sign_origin(packet, identity.signer)
