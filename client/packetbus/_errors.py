"""The one exception type the client raises, carrying the gRPC status."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NoReturn

import grpc
from google.rpc import error_details_pb2, status_pb2

from packetbus.v1 import packet_service_pb2

from . import rich_status
from ._retry_policy import maybe_applied

_CODES = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One broken rule of a rejected request: the field path, a rule id and why."""

    field: str
    reason: str
    description: str

    def __str__(self) -> str:
        return f"{self.field or '<packet>'}: {self.description}"


@dataclass(frozen=True, slots=True)
class ErrorReason:
    """The server's machine-readable reason for an error (a google.rpc.ErrorInfo):
    e.g. reason PERMISSION_DENIED with metadata {"permission": "topics.publish",
    "resource": "jobs", "principal": ...}, or UNAUTHENTICATED's reason for a missing
    or bad credential."""

    reason: str
    domain: str
    metadata: Mapping[str, str]


class PacketbusError(Exception):
    """A call failed. `code` is the gRPC status; `field_violations` lists bad fields;
    `error_info` is the server's ErrorInfo (reason, metadata), when it sent one.

    UNAUTHENTICATED (a credential missing, expired, not trusted) and PERMISSION_DENIED
    (the principal lacks `error_info.metadata["permission"]` on its "resource") are
    definite refusals: never retried, `outcome_unknown` False, nothing written.

    `outcome_unknown` (bool) says whether the call may have taken effect anyway:
    True when the request may have reached the server and its answer was lost or
    came too late (UNAVAILABLE after it was sent, DEADLINE_EXCEEDED, CANCELLED
    mid-call, UNKNOWN, INTERNAL), so a write may be stored; False when it surely
    did not (a definite refusal such as INVALID_ARGUMENT or ALREADY_EXISTS, a
    request that never left the client) or the call changes nothing (a read).
    When True, repeat an idempotent call with the same request (a dispatch: the
    same packet, same tracking id), which answers the original result if the
    first one was applied; or read back (get_packet, get_task) before acting.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        field_violations: tuple[FieldViolation, ...] = (),
        status: status_pb2.Status | None = None,
        outcome_unknown: bool = False,
        error_info: ErrorReason | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.field_violations = field_violations
        self.status = status
        self.outcome_unknown = outcome_unknown
        self.error_info = error_info

    @classmethod
    def from_status(cls, status: status_pb2.Status) -> PacketbusError:
        """From a google.rpc.Status, e.g. one packet's result in a dispatch."""
        violations: list[FieldViolation] = []
        error_info: ErrorReason | None = None
        info = rich_status.error_info(status)
        if info is not None:
            error_info = ErrorReason(info.reason, info.domain, dict(info.metadata))
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations.extend(
                    FieldViolation(v.field, v.reason, v.description) for v in bad.field_violations
                )
        code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
        return cls(
            code,
            status.message,
            field_violations=tuple(violations),
            status=status,
            error_info=error_info,
        )

    @classmethod
    def from_rpc_error(cls, error: grpc.aio.AioRpcError, *, changes: bool = True) -> PacketbusError:
        """From a failed call; `changes`: whether the call writes anything (for a
        read, `outcome_unknown` stays False)."""
        unknown = changes and maybe_applied(error)
        status = rich_status.status_in(error.trailing_metadata())
        if status is not None:
            found = cls.from_status(status)
            found.outcome_unknown = unknown
            return found
        return cls(error.code(), error.details() or "", outcome_unknown=unknown)


def client_closed(what: str = "the client") -> PacketbusError:
    """CANCELLED: a call made through (or awaited after) a closed client, consumer,
    inbox or subscription. Raised at once instead of waiting for what cannot come."""
    return PacketbusError(grpc.StatusCode.CANCELLED, f"{what} is closed")


# What grpc.aio raises for a call on a closed channel (UsageError), and for one in
# flight when the channel closed under it (CancelledError, as if the caller's own
# task had been cancelled).
CLOSED = (grpc.aio.UsageError, asyncio.CancelledError)


def own_cancellation(exc: BaseException) -> bool:
    """Whether `exc` is a CancelledError of this task's own cancellation (to re-raise),
    rather than one grpc raised for a call its closing channel cut off."""
    task = asyncio.current_task()
    return isinstance(exc, asyncio.CancelledError) and (task is None or task.cancelling() > 0)


def raise_closed(exc: BaseException) -> NoReturn:
    """Raise `exc` (one of CLOSED) as `client_closed()`; a CancelledError stays one
    when it is this task's own cancellation."""
    if own_cancellation(exc):
        raise exc
    raise client_closed() from None


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
