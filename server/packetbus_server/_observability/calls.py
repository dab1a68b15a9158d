"""One observation per RPC: when it started, how it ended (its gRPC status code)
and how long it took; fed to the metrics (`metrics.grpc_server_*`) and, for a
call that was refused or failed, to the request log (`request_log.call_failed`).

`_handlers` opens an observation before a call is admitted and closes it when the
call's handler returns, raises or is cancelled, so a call the gate refuses counts
too. How the code is found (grpc.aio): a handler that returns is OK unless it set
another code; one that aborted raised AbortError after setting its code on the
context; a CancelledError is the client going away (CANCELLED); any other
exception reaches the client as UNKNOWN (grpc's own rule for a servicer's error).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

from . import request_log

UNARY = "unary"
CLIENT_STREAM = "client_stream"
SERVER_STREAM = "server_stream"
BIDI_STREAM = "bidi_stream"


@dataclass(slots=True)
class Call:
    """An RPC being observed: `service` and `method` as in the proto (e.g.
    "packetbus.v1.PacketService", "Dispatch"); `grpc_type` one of UNARY,
    CLIENT_STREAM, SERVER_STREAM, BIDI_STREAM (go-grpc-prometheus's values);
    `request` the unary request (None for a client stream) for the log's
    tracking ids; `started` a perf_counter() reading (seconds)."""

    service: str
    method: str
    grpc_type: str
    request: Any
    started: float = field(default_factory=time.perf_counter)
    received: int = 0
    sent: int = 0


def begin(service: str, method: str, grpc_type: str, request: Any) -> Call:
    """Observe a call that starts now."""
    return Call(service, method, grpc_type, request)


def status_of(context: grpc.aio.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    """The status code the client gets for a handler that ended with `error`
    (None: it returned)."""
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if error is None or isinstance(error, grpc.aio.AbortError):
        # A handler that returned without setting a code; an abort always sets one.
        return grpc.StatusCode.OK
    return grpc.StatusCode.UNKNOWN


def end(call: Call, context: grpc.aio.ServicerContext, error: BaseException | None) -> None:
    """Close `call`: record its status and latency; log it when it did not succeed."""
    code = status_of(context, error)
    seconds = time.perf_counter() - call.started
    _record(call, code, seconds)
    if code is not grpc.StatusCode.OK:
        _log(call, code, context, error)


def _record(call: Call, code: grpc.StatusCode, seconds: float) -> None:
    # Filled by the metrics work (issue 15, item 1): grpc_server_handled_total,
    # grpc_server_handling_seconds, grpc_server_msg_*.
    del call, code, seconds


def _log(
    call: Call,
    code: grpc.StatusCode,
    context: grpc.aio.ServicerContext,
    error: BaseException | None,
) -> None:
    request_log.call_failed(call, code, context, error)
