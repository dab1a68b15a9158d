"""API errors: one JSON shape, HTTP statuses mapped from gRPC codes.

Every error answer is ``{"error": "<message>", "code": "<NAME>"}`` where NAME is a
gRPC status name (``NOT_FOUND``, ``PERMISSION_DENIED``...) for a refused packetbus
call, or the console's own (``INVALID_ARGUMENT`` for a bad request,
``UNAUTHENTICATED`` for a bad sign-in, ``CSRF`` for a state-changing request without
the console header). A caller's mistake is never a 500.
"""

from __future__ import annotations

import grpc
from starlette.responses import JSONResponse

from packetbus import PacketbusError

# gRPC code -> HTTP status. What a caller can cause is a 4xx; a server that cannot
# answer now is 503; anything else (a bug) is 500.
STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 503,
    grpc.StatusCode.CANCELLED: 503,
}


class ApiError(Exception):
    """A request the console refuses itself: `status` (HTTP), `code` (a name), message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def error_response(status: int, code: str, message: str) -> JSONResponse:
    """``{"error": message, "code": code}`` with HTTP `status` (401 adds the
    ``WWW-Authenticate: Bearer`` challenge)."""
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    return JSONResponse({"error": message, "code": code}, status_code=status, headers=headers)


def from_packetbus(exc: PacketbusError) -> JSONResponse:
    """The answer for a failed packetbus call: its code's status, its message."""
    return error_response(STATUS.get(exc.code, 500), exc.code.name, exc.message)
