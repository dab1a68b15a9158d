"""The directly written PullResponse bytes equal the generated classes' serialization."""

from __future__ import annotations

from google.rpc import code_pb2, status_pb2

from packetbus import _wire
from packetbus.v1 import consumer_group_service_pb2 as pb
from packetbus.v1 import packet_pb2
from packetbus_server import _pull_wire
from tests.conftest import new_packet


def test_pull_response_bytes_match_the_generated_classes() -> None:
    packets = [new_packet("t"), new_packet("topic/with:odd-chars")]
    packets[1].finding.claim = "é" * 300  # lengths past one varint byte
    settled = [
        pb.SettleResult(
            delivery_id="1-0:1", settlement=pb.SETTLEMENT_ACK, status=status_pb2.Status()
        ),
        pb.SettleResult(
            delivery_id="1-1:2",
            settlement=pb.SETTLEMENT_NACK,
            status={"code": code_pb2.FAILED_PRECONDITION, "message": "lease ran out"},
            carcel_id="9-0",
        ),
        pb.SettleResult(
            delivery_id="1-2:3", settlement=pb.SETTLEMENT_EXTEND, status=status_pb2.Status()
        ),
    ]
    settled[2].lease_expires_at.FromMilliseconds(1_795_000_060_123)
    settled_bytes = [
        _pull_wire.settle_result("1-0:1", pb.SETTLEMENT_ACK, code_pb2.OK),
        _pull_wire.settle_result(
            "1-1:2",
            pb.SETTLEMENT_NACK,
            code_pb2.FAILED_PRECONDITION,
            "lease ran out",
            carcel_id="9-0",
        ),
        _pull_wire.settle_result(
            "1-2:3", pb.SETTLEMENT_EXTEND, code_pb2.OK, lease_ends_ms=1_795_000_060_123
        ),
    ]
    expected = pb.PullResponse(settled=settled)
    ours = []
    for i, packet in enumerate(packets):
        payload = packet.SerializeToString(deterministic=True)
        cursor = f"1795000000{i:03d}-{i}"
        d = expected.deliveries.add(delivery_id=f"{cursor}:{i + 1}", delivery_count=i + 1)
        d.lease_expires_at.FromMilliseconds(1_795_000_030_000 + i)
        d.packet.packet.CopyFrom(packet_pb2.Packet.FromString(payload))
        d.packet.content = payload[: 10 * (i + 1)]
        d.packet.receipt.topic = packet.topic
        d.packet.receipt.cursor = cursor
        d.packet.receipt.stored_at.FromMilliseconds(1_795_000_000_000 + i)
        d.packet.receipt.expires_at.FromMilliseconds(1_795_003_600_000 + i)
        ours.append(
            _pull_wire.delivery(
                f"{cursor}:{i + 1}",
                i + 1,
                1_795_000_030_000 + i,
                packet=payload,
                receipt_bytes=_pull_wire.receipt(
                    packet.topic, cursor, 1_795_000_000_000 + i, 1_795_003_600_000 + i
                ),
                content=payload[: 10 * (i + 1)],
            )
        )
    assert _pull_wire.pull_response(ours, settled_bytes) == expected.SerializeToString(
        deterministic=True
    )


def test_millisecond_timestamps_match_the_general_encoder() -> None:
    for ms in (0, 1, 999, 1000, 1_795_000_000_000, 1_795_000_000_999, 2**41 + 7):
        assert _wire.timestamp_ms(4, ms) == _wire.timestamp(4, ms * 1_000_000), ms
