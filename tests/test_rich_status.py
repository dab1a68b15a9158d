"""packetbus.rich_status: the one reader of gRPC's rich status trailer and its
ErrorInfo, for the client, the server's metrics and its request log."""

from __future__ import annotations

from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from packetbus.rich_status import STATUS_DETAILS_KEY, error_info, status_in


def _status(*details: object) -> status_pb2.Status:
    status = status_pb2.Status(code=7, message="no")
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)  # type: ignore[arg-type]
        status.details.append(packed)
    return status


def test_the_status_is_read_from_its_trailer_only() -> None:
    status = _status(error_details_pb2.ErrorInfo(reason="R", domain="packetbus"))
    trailer = [("x-other", b"\x01"), (STATUS_DETAILS_KEY, status.SerializeToString())]
    assert status_in(trailer) == status
    assert status_in([("x-other", status.SerializeToString())]) is None
    assert status_in(None) is None
    # Bytes that do not parse are no status, not an exception.
    assert status_in([(STATUS_DETAILS_KEY, b"\xff\xff\xff")]) is None


def test_error_info_is_the_first_among_other_details() -> None:
    bad = error_details_pb2.BadRequest()
    first = error_details_pb2.ErrorInfo(reason="FIRST", domain="packetbus")
    second = error_details_pb2.ErrorInfo(reason="SECOND", domain="packetbus")
    info = error_info(_status(bad, first, second))
    assert info is not None
    assert (info.reason, info.domain) == ("FIRST", "packetbus")
    assert error_info(_status(bad)) is None
    assert error_info(None) is None
