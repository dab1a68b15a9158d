"""google.rpc.Status construction: per-packet results and rich RPC errors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from packetbus.rich_status import STATUS_DETAILS_KEY

from ._validation import Violation

# The ErrorInfo domain of every refusal packetbus itself explains.
ERROR_DOMAIN = "packetbus"


# An RPC's refusal travels in its trailers (grpc-message percent-encoded, the
# status details base64): a client refuses trailers past its metadata limit
# (grpc-core: 8 KiB soft, 16 KiB hard, by default) and sees RESOURCE_EXHAUSTED
# instead, no field named. So a BadRequest lists the violations that fit these
# budgets, first first, and its message says how many it leaves out; each field
# path and description is cut to a length (a path may quote a client's map key).
_DETAILS_BUDGET = 2000
_SUMMARY_BUDGET = 700  # bytes
_TEXT_LIMIT = 400  # bytes


def _cut(text: str) -> str:
    """`text`, at most _TEXT_LIMIT bytes of UTF-8 (whole characters)."""
    raw = text.encode()
    if len(raw) <= _TEXT_LIMIT:
        return text
    return raw[: _TEXT_LIMIT - 3].decode(errors="ignore") + "..."


def bad_request(message: str, violations: Sequence[Violation]) -> status_pb2.Status:
    detail = error_details_pb2.BadRequest()
    said: list[str] = []
    size = 0
    for v in violations:
        item = error_details_pb2.BadRequest.FieldViolation(
            field=_cut(v.field), description=_cut(v.description), reason=_cut(v.rule)
        )
        if detail.field_violations and detail.ByteSize() + item.ByteSize() > _DETAILS_BUDGET:
            break
        detail.field_violations.append(item)
        text = f"{item.field or '<packet>'}: {item.description}"
        length = len(text.encode())
        if not said or size + length <= _SUMMARY_BUDGET:
            said.append(text)
            size += length + 2
    summary = "; ".join(said)
    if len(said) < len(violations):
        summary += f"; and {len(violations) - len(said)} more"
    packed = any_pb2.Any()
    packed.Pack(detail)
    return status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT, message=f"{message}: {summary}", details=[packed]
    )


_GRPC_CODES = {c.value[0]: c for c in grpc.StatusCode}


def grpc_code(code: int) -> grpc.StatusCode:
    """The gRPC status of a google.rpc.Status code (a per-packet result's), for
    failing a whole call with the reason one derived packet was refused."""
    return _GRPC_CODES.get(code, grpc.StatusCode.INTERNAL)


def error_info_trailer(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    domain: str = ERROR_DOMAIN,
    metadata: Mapping[str, str] | None = None,
) -> tuple[tuple[str, bytes]]:
    """Trailing metadata for an RPC failed with `code` and `message`: the same status
    with a google.rpc.ErrorInfo detail (`reason`, `domain`, `metadata`) that names
    the cause."""
    rich = with_reason(code.value[0], message, reason, domain, metadata)
    return ((STATUS_DETAILS_KEY, rich.SerializeToString()),)


async def abort_with_reason(
    context: grpc.aio.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    reason: str,
    metadata: Mapping[str, str] | None = None,
) -> NoReturn:
    """End the call with `code`, `message` and an ErrorInfo of `reason` (domain
    packetbus, and `metadata`) in the status-details trailer: a client in any
    language tells this refusal from others of the same code without reading the
    message."""
    trailer = error_info_trailer(code, message, reason, metadata=metadata)
    await context.abort(code, message, trailing_metadata=trailer)
    raise AssertionError("unreachable: abort raises")


def with_reason(
    code: int,
    message: str,
    reason: str,
    domain: str = ERROR_DOMAIN,
    metadata: Mapping[str, str] | None = None,
) -> status_pb2.Status:
    """A google.rpc.Status with a google.rpc.ErrorInfo detail naming the cause
    (`reason`, UPPER_SNAKE_CASE per AIP-193, in `domain`): for a per-item result, or
    a refusal a client must tell from others of the same code without reading text."""
    packed = any_pb2.Any()
    packed.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=metadata))
    return status_pb2.Status(code=code, message=message, details=[packed])


def status(code: int, message: str) -> status_pb2.Status:
    return status_pb2.Status(code=code, message=message)


async def abort_with(context: grpc.aio.ServicerContext, rich: status_pb2.Status) -> NoReturn:
    """Fail the RPC with `rich`'s code and message, `rich` itself (with its details:
    BadRequest, ErrorInfo) in the standard status-details trailer."""
    await context.abort(
        grpc_code(rich.code),
        rich.message,
        trailing_metadata=((STATUS_DETAILS_KEY, rich.SerializeToString()),),
    )
    raise AssertionError("context.abort always raises")


async def abort_invalid(
    context: grpc.aio.ServicerContext, message: str, violations: Sequence[Violation]
) -> NoReturn:
    """Fail the RPC with INVALID_ARGUMENT, the violations in the standard details trailer."""
    await abort_with(context, bad_request(message, violations))
