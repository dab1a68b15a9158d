"""Server spans (OpenTelemetry), following the messaging semantic conventions
(https://opentelemetry.io/docs/specs/semconv/messaging/messaging-spans/).

Off by default (`ServerConfig.tracing`): then `active` is None, nothing here has
imported opentelemetry, and each traced place costs one `is None` check. On
(`enable`), spans go to the global TracerProvider (`serve --otel` installs one
exporting OTLP; a test installs its own).

Every span is kind SERVER (it serves an RPC) with messaging.system "packetbus",
messaging.operation.type (send, receive, settle) and .name (dispatch, deliver,
ack, nack, claim, complete), messaging.destination.name (the topic, or the task
queue) and, for group deliveries and settlements, messaging.consumer.group.name.
Its parent is the caller's context from the call's `traceparent` metadata; a
dispatched packet's span is instead a child of the packet's own trace_context
(the producer's span). A delivery or settlement span links to the
trace_context of each packet it carries; when it carries one packet, that
context is also its parent (the conventions allow the creation context of a
single message as parent), so one trace id joins producer, dispatch, each
delivery and the settlement, redeliveries included. A span over many packets
cannot have many parents: it keeps its caller's parent and joins each packet's
trace by its link.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc

    from packetbus.v1 import packet_pb2

SYSTEM = "packetbus"


@dataclass(frozen=True, slots=True)
class Carried:
    """One packet a span is about: its tracking id and its producer's W3C context
    ("" when it has none)."""

    tracking_id: str
    traceparent: str = ""
    tracestate: str = ""


class Tracer:
    """The server's tracer; made only by `enable` (it imports opentelemetry)."""

    def __init__(self, provider: Any = None) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()
        self._tracer = trace.get_tracer("packetbus_server", tracer_provider=provider)

    def _context(self, carrier: Mapping[str, str]) -> Any:
        return self._propagator.extract(carrier)

    def _call_context(self, context: grpc.aio.ServicerContext | None) -> Any:
        if context is None:
            return None
        metadata = context.invocation_metadata() or ()
        carrier = {k: v for k, v in metadata if k in ("traceparent", "tracestate")}
        return self._context(carrier) if carrier else None

    def _packet_context(self, carried: Carried) -> Any:
        """The Context of a packet's trace_context, or None when it names no
        valid span (none, or malformed: W3C trace-context section 3.2)."""
        if not carried.traceparent:
            return None
        parent = self._context(
            {"traceparent": carried.traceparent, "tracestate": carried.tracestate}
        )
        if not self._trace.get_current_span(parent).get_span_context().is_valid:
            return None
        return parent

    def _link(self, carried: Carried, **attributes: Any) -> Any:
        parent = self._packet_context(carried)
        if parent is None:
            return None
        span_context = self._trace.get_current_span(parent).get_span_context()
        return self._trace.Link(
            span_context, {"messaging.message.id": carried.tracking_id, **attributes}
        )

    def dispatched(
        self,
        context: grpc.aio.ServicerContext | None,
        packets: Iterable[tuple[packet_pb2.Packet, str | None]],
        start_ns: int,
    ) -> None:
        """One `send {topic}` span per packet, from `start_ns` (time.time_ns()) to
        now: a child of the packet's trace_context (else of the call's); `packets`
        pairs each packet with None (stored or answered as before) or the error
        message it was refused with."""
        call = self._call_context(context)
        for packet, error in packets:
            # The packet's own context when it names a valid span; a malformed one
            # (refused, so never stored) would otherwise start a trace of its own.
            own = self._packet_context(carried(packet))
            parent = call if own is None else own
            span = self._tracer.start_span(
                f"send {packet.topic}",
                context=parent,
                kind=self._trace.SpanKind.SERVER,
                start_time=start_ns,
                attributes={
                    "messaging.system": SYSTEM,
                    "messaging.operation.type": "send",
                    "messaging.operation.name": "dispatch",
                    "messaging.destination.name": packet.topic,
                    "messaging.message.id": packet.tracking_id,
                },
            )
            if error is not None:
                span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, error))
            span.end()

    def batch(
        self,
        context: grpc.aio.ServicerContext | None,
        operation: tuple[str, str],
        destination: str,
        carried: list[Carried],
        *,
        group: str = "",
        link_attributes: list[dict[str, Any]] | None = None,
    ) -> None:
        """One `{operation name} {destination}` span over `carried` packets (a
        delivery or a settlement), linked to each one's producer context.
        `operation`: (messaging.operation.type, messaging.operation.name)."""
        if not carried:
            return
        extras = link_attributes or [{} for _ in carried]
        links = [self._link(c, **x) for c, x in zip(carried, extras, strict=True)]
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": operation[0],
            "messaging.operation.name": operation[1],
            "messaging.destination.name": destination,
        }
        if group:
            attributes["messaging.consumer.group.name"] = group
        if len(carried) == 1:
            attributes["messaging.message.id"] = carried[0].tracking_id
        else:
            attributes["messaging.batch.message_count"] = len(carried)
        parent = self._call_context(context)
        kept = [link for link in links if link is not None]
        if len(carried) == 1 and kept:
            # One packet: its producer's context is the parent (the conventions'
            # "creation context" of a single message), so the producer, the
            # dispatch, every delivery and the settlement share one trace id;
            # the call's own context, when it sent one, becomes a link instead.
            caller = self._trace.get_current_span(parent).get_span_context()
            if caller.is_valid:
                kept.append(self._trace.Link(caller))
            parent = self._packet_context(carried[0])
        span = self._tracer.start_span(
            f"{operation[1]} {destination}",
            context=parent,
            kind=self._trace.SpanKind.SERVER,
            attributes=attributes,
            links=kept,
        )
        span.end()


# The one switch every traced place checks: None when tracing is off.
active: Tracer | None = None


def enable(provider: Any = None) -> None:
    """Trace from now on, to `provider` (None: the global TracerProvider).

    Raises ModuleNotFoundError when opentelemetry is not installed."""
    global active
    active = Tracer(provider)


def disable() -> None:
    """Stop tracing (a server that stops)."""
    global active
    active = None


def carried(packet: packet_pb2.Packet) -> Carried:
    """What a span needs of `packet`."""
    trace = packet.trace_context
    return Carried(packet.tracking_id, trace.traceparent, trace.tracestate)


def carried_in(content: bytes, tracking_id: str) -> Carried:
    """What a span needs of a stored packet's content bytes (chain excluded)."""
    from packetbus.v1 import packet_pb2

    trace = packet_pb2.Packet.FromString(content).trace_context
    return Carried(tracking_id, trace.traceparent, trace.tracestate)
