"""gRPC's rich error model, read the same way by the client and the server.

A call's google.rpc.Status (its code, message and typed details) travels in the
``grpc-status-details-bin`` trailer (https://grpc.io/docs/guides/error/#richer-error-model);
packetbus puts a google.rpc.ErrorInfo (domain "packetbus", a reason, metadata)
among its details when a refusal has a machine-readable reason (README "Errors").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"


def status_in(metadata: Iterable[tuple[str, Any]] | None) -> status_pb2.Status | None:
    """The google.rpc.Status in a call's trailing `metadata`; None when there is none
    or its bytes do not parse."""
    for key, value in metadata or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except DecodeError:
                return None
    return None


def error_info(status: status_pb2.Status | None) -> error_details_pb2.ErrorInfo | None:
    """The first google.rpc.ErrorInfo among `status`'s details, or None."""
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None
