"""The directly written SubscribeResponse bytes equal the generated classes' serialization."""

from __future__ import annotations

import pytest

from packetbus.v1 import packet_service_pb2 as pb
from packetbus_server import _subscribe_wire
from packetbus_server._log_pages import LogEntry
from packetbus_server._stored_packets import stored_packet
from tests.conftest import new_packet


def _entries() -> list[LogEntry]:
    packets = [new_packet("t"), new_packet("t")]
    packets[1].finding.claim = "é" * 300  # lengths past one varint byte
    entries = []
    for i, packet in enumerate(packets):
        content = packet.SerializeToString(deterministic=True)
        # A chain after the content, as stored (the client's entry, the server's two).
        for n in range(1 + 2 * i):
            packet.chain_of_custody.add(record=bytes([n]) * 150, signature=b"s" * 64, key_id="k")
        payload = packet.SerializeToString(deterministic=True)
        entries.append(
            LogEntry(f"1795000000{i:03d}-{i}", 1_795_003_600_000 + i, payload, len(content))
        )
    return entries


def _expected(topic: str, entries: list[LogEntry], gap: pb.SubscriptionGap | None) -> bytes:
    response = pb.SubscribeResponse(
        packets=[
            stored_packet(topic, e.cursor, e.expires_at_ms, e.payload, e.content_length)
            for e in entries
        ]
    )
    if gap is not None:
        response.gap.CopyFrom(gap)
    return response.SerializeToString()


@pytest.mark.parametrize("topic", ["t", "topic/with:odd-chars." + "x" * 200])
@pytest.mark.parametrize(
    "gap",
    [
        None,
        pb.SubscriptionGap(
            last_cursor="1-0",
            resume_after_cursor="9-0",
            missed_packets=300,
            reason=pb.GAP_REASON_TRIMMED,
        ),
    ],
)
def test_subscribe_response_bytes_match_the_generated_classes(
    topic: str, gap: pb.SubscriptionGap | None
) -> None:
    entries = _entries()
    ours = _subscribe_wire.subscribe_response(
        [_subscribe_wire.stored_packet(topic, e) for e in entries], gap
    )
    assert ours == _expected(topic, entries, gap)
    # And it parses back to the very packets stored, chain and content included.
    parsed = pb.SubscribeResponse.FromString(ours)
    assert [p.packet.SerializeToString(deterministic=True) for p in parsed.packets] == [
        e.payload for e in entries
    ]
    assert [p.content for p in parsed.packets] == [e.payload[: e.content_length] for e in entries]


def test_a_gap_alone_is_a_response_of_its_gap_only() -> None:
    gap = pb.SubscriptionGap(reason=pb.GAP_REASON_EXPIRED, last_cursor="1-0")
    assert _subscribe_wire.subscribe_response([], gap) == _expected("t", [], gap)
    assert _subscribe_wire.subscribe_response([], None) == b""
