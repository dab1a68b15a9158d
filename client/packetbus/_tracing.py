"""OpenTelemetry on the client side, when it is installed (it is optional).

With a span current, `producing` makes a PRODUCER span `send {topic}` per packet
(messaging semantic conventions: messaging.system "packetbus",
messaging.operation.type "send", messaging.destination.name, messaging.message.id)
and writes its W3C context into the packet's `trace_context` (unless the caller
set one) before the packet is sealed, so the origin's signature covers it.
`TraceMetadata` puts the current context on every gRPC call (traceparent and
tracestate metadata). `context_of` and `link_to` let a consumer continue or link
to a received packet's trace. Without opentelemetry all of this is inert.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from .v1 import packet_pb2

try:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the otel extra is not installed
    trace = None  # type: ignore[assignment]

AVAILABLE = trace is not None
_PROPAGATOR: Any = TraceContextTextMapPropagator() if AVAILABLE else None


def current() -> bool:
    """Whether a span is current (with opentelemetry): only then are producer spans made."""
    return AVAILABLE and bool(trace.get_current_span().get_span_context().is_valid)


_INERT = contextlib.nullcontext()


def producing(packet: packet_pb2.Packet) -> contextlib.AbstractContextManager[None]:
    """Around one send of `packet` (before it is sealed): its producer span, when a
    span is current; the packet's tracking id must be filled already. Without one, an
    inert context: this is on every dispatch, and a generator context costs ~0.6 us."""
    return _producer_span(packet) if current() else _INERT


@contextlib.contextmanager
def _producer_span(packet: packet_pb2.Packet) -> Iterator[None]:
    tracer = trace.get_tracer("packetbus")
    with tracer.start_as_current_span(
        f"send {packet.topic}",
        kind=trace.SpanKind.PRODUCER,
        attributes={
            "messaging.system": "packetbus",
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.destination.name": packet.topic,
            "messaging.message.id": packet.tracking_id,
        },
    ):
        if not packet.HasField("trace_context"):
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier)
            packet.trace_context.traceparent = carrier.get("traceparent", "")
            if carrier.get("tracestate"):
                packet.trace_context.tracestate = carrier["tracestate"]
        yield


def context_of(packet: packet_pb2.Packet) -> Any:
    """The producer's context of a received `packet` as an OpenTelemetry Context, to
    continue its trace (`tracer.start_as_current_span(..., context=...)`); None
    without opentelemetry or when the packet carries none."""
    if not AVAILABLE or not packet.trace_context.traceparent:
        return None
    return _PROPAGATOR.extract(
        {
            "traceparent": packet.trace_context.traceparent,
            "tracestate": packet.trace_context.tracestate,
        }
    )


def link_to(packet: packet_pb2.Packet) -> Any:
    """An OpenTelemetry Link to the producer's span of a received `packet` (for a
    span over several packets), or None (no opentelemetry, no trace context)."""
    context = context_of(packet)
    if context is None:
        return None
    span_context = trace.get_current_span(context).get_span_context()
    if not span_context.is_valid:
        return None
    return trace.Link(span_context, {"messaging.message.id": packet.tracking_id})


def _with_trace(details: Any) -> Any:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    if not carrier:
        return details
    metadata = list(details.metadata or ())
    metadata += [(k, v) for k, v in carrier.items() if k in ("traceparent", "tracestate")]
    return (
        details._replace(metadata=metadata)
        if hasattr(details, "_replace")
        else type(details)(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )
    )


def interceptors() -> list[Any]:
    """The channel's interceptors: one that puts the current trace context on each
    call, when opentelemetry is installed."""
    if not AVAILABLE:
        return []
    import grpc

    class TraceMetadata(
        grpc.aio.UnaryUnaryClientInterceptor,  # type: ignore[misc]
        grpc.aio.UnaryStreamClientInterceptor,  # type: ignore[misc]
        grpc.aio.StreamUnaryClientInterceptor,  # type: ignore[misc]
        grpc.aio.StreamStreamClientInterceptor,  # type: ignore[misc]
    ):
        async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            return await continuation(_with_trace(details), request)

        async def intercept_unary_stream(
            self, continuation: Any, details: Any, request: Any
        ) -> Any:
            return await continuation(_with_trace(details), request)

        async def intercept_stream_unary(
            self, continuation: Any, details: Any, requests: Any
        ) -> Any:
            return await continuation(_with_trace(details), requests)

        async def intercept_stream_stream(
            self, continuation: Any, details: Any, requests: Any
        ) -> Any:
            return await continuation(_with_trace(details), requests)

    return [TraceMetadata()]
