"""The request log: one record per refused or failed call, on logger
``packetbus.server.requests`` (see `call_failed` for its fields and levels).

Rate limit (why: a client looping on a bad call must not fill the disk, nor bury
the lines that matter): each (rpc, grpc_code) pair has a bucket of `BURST` lines
that refills at `BURST` lines per `WINDOW_SECONDS` (a token bucket). A call that
finds its bucket empty is not logged, only counted; the next line written for
that pair carries ``suppressed``: how many were not written since the previous
one. The pairs are bounded by construction (the served methods times the 17 gRPC
codes), so the buckets are too. Every call, logged or not, still counts in the
metrics (grpc_server_handled_total).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import message

from packetbus.rich_status import error_info, status_in

from .._access.gate import caller
from .._access.principal import LOCAL
from .._trace_context import trace_id_of

if TYPE_CHECKING:
    from .calls import Call

log = logging.getLogger("packetbus.server.requests")

BURST = 10
WINDOW_SECONDS = 60.0
# A batch names this many of its tracking ids, and how many packets it held.
SHOWN_TRACKING_IDS = 3
# Longer status messages are cut here (they are the server's own words, but a
# violation list of a large batch runs long).
MAX_MESSAGE_CHARS = 500
# A tracking id the request carried is shown only up to this length: an invalid
# one may be anything a client sent (a UUID is 36 characters).
MAX_TRACKING_ID_CHARS = 64

# Who is at fault decides the level: a client's mistake or a refusal is INFO, a
# refused identity WARNING (a probe or a misconfigured agent), the server or its
# store failing WARNING/ERROR; a client that went away is no failure (DEBUG).
_LEVELS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.CANCELLED: logging.DEBUG,
    grpc.StatusCode.UNAUTHENTICATED: logging.WARNING,
    grpc.StatusCode.PERMISSION_DENIED: logging.WARNING,
    grpc.StatusCode.UNAVAILABLE: logging.WARNING,
    grpc.StatusCode.DEADLINE_EXCEEDED: logging.WARNING,
    grpc.StatusCode.INTERNAL: logging.ERROR,
    grpc.StatusCode.UNKNOWN: logging.ERROR,
    grpc.StatusCode.DATA_LOSS: logging.ERROR,
}


def level_of(code: grpc.StatusCode) -> int:
    """The level a call that ended with `code` is logged at (see `_LEVELS`)."""
    return _LEVELS.get(code, logging.INFO)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float
    suppressed: int = 0


class LineBudget:
    """Token buckets per key: `burst` lines, refilled at `burst` per `window`
    seconds of `clock` (time.monotonic unless given)."""

    def __init__(
        self,
        burst: int = BURST,
        window: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._burst = burst
        self._rate = burst / window
        self._clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def take(self, key: tuple[str, str]) -> int | None:
        """None: no line for `key` now (counted as suppressed); else write one,
        and this many lines for `key` were suppressed since the last one written."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self._burst), now)
        bucket.tokens = min(float(self._burst), bucket.tokens + (now - bucket.at) * self._rate)
        bucket.at = now
        if bucket.tokens < 1.0:
            bucket.suppressed += 1
            return None
        bucket.tokens -= 1.0
        suppressed, bucket.suppressed = bucket.suppressed, 0
        return suppressed


_budget = LineBudget()


def call_failed(
    call: Call,
    code: grpc.StatusCode,
    context: grpc.aio.ServicerContext,
    error: BaseException | None,
) -> None:
    """Log `call`, which ended with `code` (not OK), unless its (rpc, code) is over
    its budget (see the module's docstring).

    The record's message is "<rpc> <grpc_code>"; its fields: ``rpc``
    ("packetbus.v1.PacketService/Dispatch"), ``grpc_code`` ("INVALID_ARGUMENT"),
    ``status_message`` (the status message the client got, at most
    MAX_MESSAGE_CHARS), ``reason`` (the google.rpc.ErrorInfo reason, when the
    status carries one), ``error`` (the exception's type, for UNKNOWN), ``principal``
    ({name, source, agent_id}; absent when the call was not authenticated),
    ``peer`` (gRPC's, e.g. "ipv4:127.0.0.1:51234"), ``duration_ms``,
    ``tracking_id`` (a request about one packet) or ``tracking_ids`` (a batch's
    first SHOWN_TRACKING_IDS) and ``packets`` (its size), ``trace_id`` (of a valid
    W3C traceparent the call carried), ``suppressed`` (see the module's docstring).
    Never a packet's contents, a credential or metadata beyond the traceparent.
    """
    level = level_of(code)
    if not log.isEnabledFor(level):
        return
    rpc = f"{call.service}/{call.method}"
    suppressed = _budget.take((rpc, code.name))
    if suppressed is None:
        return
    fields: dict[str, Any] = {"rpc": rpc, "grpc_code": code.name}
    details = context.details()
    if details:
        text = details if isinstance(details, str) else bytes(details).decode("utf-8", "replace")
        fields["status_message"] = _cut(text, MAX_MESSAGE_CHARS)
    reason = _error_reason(context)
    if reason is not None:
        fields["reason"] = reason
    if code is grpc.StatusCode.UNKNOWN and error is not None:
        fields["error"] = type(error).__name__
    principal = caller()
    if principal is not None and principal is not LOCAL:
        fields["principal"] = {
            "name": principal.name,
            "source": principal.source,
            "agent_id": principal.agent_id,
        }
    fields["peer"] = call.peer  # read at the start: see calls.Call
    fields["duration_ms"] = round((time.perf_counter() - call.started) * 1000, 3)
    fields.update(_tracking_ids(call.request))
    trace_id = _trace_id(context)
    if trace_id is not None:
        fields["trace_id"] = trace_id
    if suppressed:
        fields["suppressed"] = suppressed
    log.log(level, "%s %s", rpc, code.name, extra=fields)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error_reason(context: grpc.aio.ServicerContext) -> str | None:
    """The reason of the google.rpc.ErrorInfo in the status details trailer, if any."""
    info = error_info(status_in(context.trailing_metadata()))
    return str(info.reason) if info is not None else None


def _tracking_ids(request: Any) -> dict[str, Any]:
    """A unary request's tracking ids: its own ``tracking_id``, its ``packet``'s,
    or a batch's (``packets``): the first few and the count."""
    if not isinstance(request, message.Message):
        return {}  # a client stream, or bytes that did not parse
    names = request.DESCRIPTOR.fields_by_name
    if "tracking_id" in names and isinstance(request.tracking_id, str):  # type: ignore[attr-defined]
        return _one(request.tracking_id)  # type: ignore[attr-defined]
    packet = names.get("packet")
    if packet is not None and packet.message_type is not None and request.HasField("packet"):
        return _one(getattr(request.packet, "tracking_id", ""))  # type: ignore[attr-defined]
    if "packets" in names:
        packets = request.packets  # type: ignore[attr-defined]
        shown = [_cut(p.tracking_id, MAX_TRACKING_ID_CHARS) for p in packets[:SHOWN_TRACKING_IDS]]
        return {"tracking_ids": shown, "packets": len(packets)}
    return {}


def _one(tracking_id: str) -> dict[str, Any]:
    return {"tracking_id": _cut(tracking_id, MAX_TRACKING_ID_CHARS)} if tracking_id else {}


def _trace_id(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "traceparent" and isinstance(value, str):
            # The rules a packet's trace_context is validated by (W3C, version 00).
            return trace_id_of(value.strip())
    return None
