"""google.rpc.Status construction: per-packet results and rich RPC errors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from ._validation import Violation

STATUS_DETAILS_KEY = "grpc-status-details-bin"


def bad_request(message: str, violations: Sequence[Violation]) -> status_pb2.Status:
    detail = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field=v.field, description=v.description, reason=v.rule
            )
            for v in violations
        ]
    )
    packed = any_pb2.Any()
    packed.Pack(detail)
    summary = "; ".join(f"{v.field or '<packet>'}: {v.description}" for v in violations)
    return status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT, message=f"{message}: {summary}", details=[packed]
    )


def status(code: int, message: str) -> status_pb2.Status:
    return status_pb2.Status(code=code, message=message)


async def abort_invalid(
    context: grpc.aio.ServicerContext, message: str, violations: Sequence[Violation]
) -> NoReturn:
    """Fail the RPC with INVALID_ARGUMENT, the violations in the standard details trailer."""
    rich = bad_request(message, violations)
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        rich.message,
        trailing_metadata=((STATUS_DETAILS_KEY, rich.SerializeToString()),),
    )
    raise AssertionError("context.abort always raises")
