"""A consumer group's settlements as asked (Request, parsed from a delivery id) and as
answered (Answer: a SettleResult, or its bytes on a Pull stream), and what a Pull
stream holds of each delivery it made (Held).

Apart from the settling itself (_group_settling), which signs hops and calls the store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from google.rpc import code_pb2, status_pb2

from packetbus.v1 import consumer_group_service_pb2 as pb

from . import _pull_wire
from ._custodian import ChainEnd
from ._fields import is_stream_id, utf8_length
from ._group_store import Kind
from ._observability import tracing
from ._status import bad_request, with_reason
from ._violation import Violation

# "<cursor>:<delivery count>", ASCII digits only (`\d` takes other scripts' digits too).
_DELIVERY_ID = re.compile(r"([0-9]{1,20}-[0-9]{1,20}):([0-9]{1,10})\Z")
_MAX_REASON = 1024


def delivery_id(cursor: str, count: int) -> str:
    return f"{cursor}:{count}"


@dataclass(slots=True)
class Held:
    """A delivery this server made (on a Pull stream): what its next hop links to."""

    tracking_id: str
    content_digest: bytes
    end: ChainEnd
    size: int
    lease_ends_ms: int
    expires_at_ms: int
    # Its producer's trace context, read only while tracing is on.
    trace: tracing.Carried | None = None


# Not frozen: made for every packet on the delivery path, where a frozen
# dataclass's __init__ (object.__setattr__ per field) costs four times as much.
@dataclass(slots=True)
class Request:
    """One settlement asked for, parsed."""

    kind: Kind
    delivery_id: str
    cursor: str = ""
    count: int = 0
    delay_ms: int = 0
    reason: str = ""
    # Why the request cannot be settled at all (INVALID_ARGUMENT), or None.
    problem: Violation | None = None


def parse_request(kind: Kind, ident: str, *, delay_s: int = 0, reason: str = "") -> Request:
    match = _DELIVERY_ID.match(ident)
    if match is None or not is_stream_id(match.group(1)):
        return Request(
            kind,
            ident,
            problem=Violation(
                "delivery_id", "DELIVERY_ID", "not a delivery id (like 1700000000000-0:1)"
            ),
        )
    if utf8_length(reason) > _MAX_REASON:
        return Request(
            kind,
            ident,
            problem=Violation(
                "reason", "TEXT_LENGTH", f"reason is longer than {_MAX_REASON} bytes (UTF-8)"
            ),
        )
    return Request(kind, ident, match.group(1), int(match.group(2)), delay_s * 1000, reason=reason)


def held_request(kind: Kind, ident: str, held: dict[str, Held]) -> Request:
    """As `parse_request`; an id of a delivery `held` by the stream is one it made, so well-formed."""
    if ident in held:
        cursor, _, count = ident.rpartition(":")
        return Request(kind, ident, cursor, int(count))
    return parse_request(kind, ident)


def deliveries_made(r: Request) -> int:
    """Deliveries made of a packet settled by `r`: its count, except for a lease that
    ran out on the last attempt (a CARCEL request, made by the pull that found it),
    whose count the pull raised for a delivery it did not make."""
    return r.count - 1 if r.kind is Kind.CARCEL else r.count


def nacked(nack: pb.Nacked) -> Request:
    kind = Kind.RELEASE if nack.release else Kind.NACK
    return parse_request(kind, nack.delivery_id, delay_s=nack.delay_seconds, reason=nack.reason)


@dataclass(slots=True)
class Answer:
    """A settlement's result: written straight to a Pull stream, or as a SettleResult
    for the unary calls (an ack's result is made for every packet)."""

    delivery_id: str
    settlement: int
    code: int
    message: str = ""
    carcel_id: str = ""
    lease_ends_ms: int = 0
    # The whole status when it carries details (a BadRequest); else code and message.
    status: status_pb2.Status | None = None

    def wire(self) -> bytes:
        return _pull_wire.settle_result(
            self.delivery_id,
            self.settlement,
            self.code,
            self.message,
            carcel_id=self.carcel_id,
            lease_ends_ms=self.lease_ends_ms,
            status=None if self.status is None else self.status.SerializeToString(),
        )

    def result(self) -> pb.SettleResult:
        result = pb.SettleResult(
            delivery_id=self.delivery_id,
            settlement=self.settlement,  # type: ignore[arg-type]
            status=self.status or status_pb2.Status(code=self.code, message=self.message),
            carcel_id=self.carcel_id,
        )
        if self.lease_ends_ms:
            result.lease_expires_at.FromMilliseconds(self.lease_ends_ms)
        return result


def refused(r: Request, code: int, message: str, reason: str) -> Answer:
    """`r` refused with `code` and an ErrorInfo of `reason` (SettleResult's comment
    lists them): a client tells a lease that ran out from a packet gone without
    reading the message."""
    status = with_reason(code, message, reason)
    return Answer(r.delivery_id, SETTLEMENT[r.kind], code, message, status=status)


def invalid(r: Request, violation: Violation) -> Answer:
    """INVALID_ARGUMENT for `r`, its message the violation's description and a
    google.rpc.BadRequest naming the field (relative to the Nacked, or
    delivery_id), as every other bad field is told (README "Packets and their rules")."""
    status = bad_request("", [violation])
    status.message = violation.description
    return Answer(
        r.delivery_id,
        SETTLEMENT[r.kind],
        code_pb2.INVALID_ARGUMENT,
        violation.description,
        status=status,
    )


SETTLEMENT = {
    Kind.ACK: pb.SETTLEMENT_ACK,
    Kind.NACK: pb.SETTLEMENT_NACK,
    Kind.RELEASE: pb.SETTLEMENT_NACK,
    Kind.EXTEND: pb.SETTLEMENT_EXTEND,
    Kind.CARCEL: pb.SETTLEMENT_NACK,
}
