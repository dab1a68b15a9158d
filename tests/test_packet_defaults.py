"""fill_defaults: what a sender may leave out, filled in place, and nothing it set changed."""

from __future__ import annotations

import time
import uuid

from packetbus import fill_defaults
from packetbus.v1 import packet_pb2, speech_act_pb2

INFORM = speech_act_pb2.SPEECH_ACT_INFORM


def test_a_bare_packet_gets_a_uuid_the_schema_and_the_time_it_was_filled() -> None:
    packet = packet_pb2.Packet(topic="t", origin="a", speech_act=INFORM)
    before = time.time_ns()
    assert fill_defaults(packet) is packet
    after = time.time_ns()
    assert str(uuid.UUID(packet.tracking_id)) == packet.tracking_id
    assert uuid.UUID(packet.tracking_id).version == 4
    assert packet.schema_version == "1.0"
    # To the nanosecond the clock gave, not rounded to a datetime's microseconds.
    assert before <= packet.dispatched_at.ToNanoseconds() <= after


def test_what_the_sender_set_is_kept() -> None:
    packet = packet_pb2.Packet(
        topic="t",
        origin="a",
        speech_act=INFORM,
        tracking_id="0b5f2a52-3c55-4b8e-9a0e-5d2a4c1f7e21",
        schema_version="1.0",
    )
    packet.dispatched_at.FromNanoseconds(1_700_000_000_123_456_789)
    fill_defaults(packet)
    assert packet.tracking_id == "0b5f2a52-3c55-4b8e-9a0e-5d2a4c1f7e21"
    assert packet.dispatched_at.ToNanoseconds() == 1_700_000_000_123_456_789
