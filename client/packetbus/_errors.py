"""The one exception type the client raises, carrying the gRPC status."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2, status_pb2

from packetbus.v1 import packet_service_pb2

_STATUS_DETAILS_KEY = "grpc-status-details-bin"
_CODES = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One broken rule of a rejected request: the field path, a rule id and why."""

    field: str
    reason: str
    description: str

    def __str__(self) -> str:
        return f"{self.field or '<packet>'}: {self.description}"


class PacketbusError(Exception):
    """A call failed. `code` is the gRPC status; `field_violations` lists bad fields."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        field_violations: tuple[FieldViolation, ...] = (),
        status: status_pb2.Status | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.field_violations = field_violations
        self.status = status

    @classmethod
    def from_status(cls, status: status_pb2.Status) -> PacketbusError:
        """From a google.rpc.Status, e.g. one packet's result in a dispatch."""
        violations: list[FieldViolation] = []
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations.extend(
                    FieldViolation(v.field, v.reason, v.description) for v in bad.field_violations
                )
        code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
        return cls(code, status.message, field_violations=tuple(violations), status=status)

    @classmethod
    def from_rpc_error(cls, error: grpc.aio.AioRpcError) -> PacketbusError:
        for key, value in error.trailing_metadata() or ():
            if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
                return cls.from_status(status_pb2.Status.FromString(value))
        return cls(error.code(), error.details() or "")


_GAP_CAUSES = {
    packet_service_pb2.GAP_REASON_TRIMMED: "removed by the topic's retention",
    packet_service_pb2.GAP_REASON_EXPIRED: "expired (their TTL ran out)",
}


def describe_gap(gap: packet_service_pb2.SubscriptionGap) -> str:
    """One line saying which packets a subscription missed, and why."""
    since = f"after cursor {gap.last_cursor}" if gap.last_cursor else "since it started"
    count = f"{gap.missed_packets} packets" if gap.missed_packets else "packets"
    cause = _GAP_CAUSES.get(gap.reason, "gone")
    return (
        f"subscription gap: {count} {since}, up to cursor {gap.resume_after_cursor}, were "
        f"{cause} before they could be delivered; it continues after {gap.resume_after_cursor}"
    )


class SubscriptionGapError(PacketbusError):
    """A subscription missed packets: DATA_LOSS, with the `gap` (cursors, count, reason).

    The subscription's cursor is already past the gap: catch this and keep
    iterating to continue with the packets after it.
    """

    def __init__(self, gap: packet_service_pb2.SubscriptionGap) -> None:
        super().__init__(grpc.StatusCode.DATA_LOSS, describe_gap(gap))
        self.gap = gap
