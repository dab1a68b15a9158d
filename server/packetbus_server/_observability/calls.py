"""One observation per RPC: when it started, how it ended (its gRPC status code)
and how long it took; fed to the metrics (`metrics.grpc_server_*`) and, for a
call that was refused or failed, to the request log (`request_log.call_failed`).

`_handlers` opens an observation before a call is admitted and closes it when the
call's handler returns, raises or is cancelled, so a call the gate refuses counts
too. How the code is found (grpc.aio): a handler that returns is OK unless it set
another code; one that aborted raised AbortError after setting its code on the
context; a CancelledError is the client going away (CANCELLED) or, once the
call's deadline has passed, DEADLINE_EXCEEDED; any other
exception reaches the client as UNKNOWN (grpc's own rule for a servicer's error).
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import Any

import grpc

from . import metrics, request_log

UNARY = "unary"
CLIENT_STREAM = "client_stream"
SERVER_STREAM = "server_stream"
BIDI_STREAM = "bidi_stream"


class _Meters:
    """The labelled children of one method's grpc_server_* metrics, made once:
    `labels()` costs a lock and a dict lookup, too much for every call."""

    __slots__ = ("handled", "handled_by_code", "received", "seconds", "sent", "started")

    def __init__(self, labels: tuple[str, str, str]) -> None:
        self.started = metrics.grpc_server_started.labels(*labels)
        self.seconds = metrics.grpc_server_handling_seconds.labels(*labels)
        self.received = metrics.grpc_server_msg_received.labels(*labels)
        self.sent = metrics.grpc_server_msg_sent.labels(*labels)
        self.handled = labels
        self.handled_by_code: dict[grpc.StatusCode, Any] = {}

    def handled_with(self, code: grpc.StatusCode) -> Any:
        child = self.handled_by_code.get(code)
        if child is None:
            # go-grpc-prometheus's grpc_code: the code's name (OK, NOT_FOUND, ...).
            child = metrics.grpc_server_handled.labels(*self.handled, code.name)
            self.handled_by_code[code] = child
        return child


# (service, method, grpc_type) -> its meters: bounded by the methods served.
_meters: dict[tuple[str, str, str], _Meters] = {}


def _meters_of(service: str, method: str, grpc_type: str) -> _Meters:
    key = (service, method, grpc_type)
    found = _meters.get(key)
    if found is None:
        found = _meters[key] = _Meters((grpc_type, service, method))
    return found


class Call:
    """An RPC being observed: `service` and `method` as in the proto (e.g.
    "packetbus.v1.PacketService", "Dispatch"); `grpc_type` one of UNARY,
    CLIENT_STREAM, SERVER_STREAM, BIDI_STREAM (go-grpc-prometheus's values);
    `request` the unary request (None for a client stream) for the log's
    tracking ids; `peer` the client's address as gRPC gives it, read at the start
    (context.peer() after the call has ended can crash grpc.aio: a segfault seen
    when a client went away); `started` a perf_counter() reading (seconds).

    `received` and `sent` count the call's messages; each increase is counted in
    grpc_server_msg_received_total / _sent_total at once, as go-grpc-prometheus
    does, so a long stream's messages show while it is open."""

    __slots__ = (
        "_meters",
        "_received",
        "_sent",
        "grpc_type",
        "method",
        "peer",
        "request",
        "service",
        "started",
    )

    def __init__(self, service: str, method: str, grpc_type: str, request: Any, peer: str) -> None:
        self.service = service
        self.peer = peer
        self.method = method
        self.grpc_type = grpc_type
        self.request = request
        self._meters = _meters_of(service, method, grpc_type)
        self._received = 0
        self._sent = 0
        self.started = time.perf_counter()

    @property
    def received(self) -> int:
        return self._received

    @received.setter
    def received(self, count: int) -> None:
        self._meters.received.inc(count - self._received)
        self._received = count

    @property
    def sent(self) -> int:
        return self._sent

    @sent.setter
    def sent(self, count: int) -> None:
        self._meters.sent.inc(count - self._sent)
        self._sent = count


def begin(
    service: str,
    method: str,
    grpc_type: str,
    request: Any,
    context: grpc.aio.ServicerContext,
) -> Call:
    """Observe a call that starts now (counted in grpc_server_started_total)."""
    call = Call(service, method, grpc_type, request, context.peer() or "")
    call._meters.started.inc()
    return call


class Observed:
    """``with Observed(service, method, grpc_type, request, context) as call:`` opens
    the observation (`begin`) and closes it when the block ends (`end`, with the
    exception that ended it, which goes on); the one shape of every handler in
    _handlers."""

    __slots__ = ("call", "context")

    def __init__(
        self,
        service: str,
        method: str,
        grpc_type: str,
        request: Any,
        context: grpc.aio.ServicerContext,
    ) -> None:
        self.context = context
        self.call = begin(service, method, grpc_type, request, context)

    def __enter__(self) -> Call:
        return self.call

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        end(self.call, self.context, error)


def status_of(context: grpc.aio.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    """The status code the client gets for a handler that ended with `error`
    (None: it returned)."""
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        # grpc.aio cancels the handler both when the client goes away and when
        # the call's deadline passes; the client sees DEADLINE_EXCEEDED then. A
        # streaming handler suspended at a `yield` is closed instead (GeneratorExit)
        # when its call ends under it, e.g. the client refused a reply over its
        # receive limit: that too is a client gone, not a server error.
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
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
    # go-grpc-prometheus: handled_total by code and handling_seconds at the end;
    # started_total in begin, the messages as they go (Call.received, Call.sent).
    meters = call._meters
    meters.handled_with(code).inc()
    meters.seconds.observe(seconds)


def _log(
    call: Call,
    code: grpc.StatusCode,
    context: grpc.aio.ServicerContext,
    error: BaseException | None,
) -> None:
    request_log.call_failed(call, code, context, error)
