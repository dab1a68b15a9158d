"""OpenTelemetry traces through packets (README "Traces"): producer -> dispatch ->
delivery (again after a nack) -> ack carry one trace id; tasks; Subscribe; off."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import packetbus
from packetbus_server._observability import tracing

from .conftest import REPO, new_packet, unique

EXPORTER = InMemorySpanExporter()
PROVIDER = TracerProvider()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
# The client's spans go to the global provider; set once per process.
trace.set_tracer_provider(PROVIDER)


@pytest.fixture
def spans(server: object) -> Iterator[InMemorySpanExporter]:
    """The test's server traces into EXPORTER while the test runs."""
    EXPORTER.clear()
    tracing.enable(PROVIDER)
    yield EXPORTER
    tracing.disable()


def _of(trace_id: int, exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    def joined(span: ReadableSpan) -> bool:
        assert span.context is not None
        return span.context.trace_id == trace_id or any(
            link.context.trace_id == trace_id for link in span.links
        )

    return [s for s in exporter.get_finished_spans() if joined(s)]


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_a_group_packet_nacked_redelivered_and_acked_is_one_trace(
    client: packetbus.Client, topic: str, spans: InMemorySpanExporter
) -> None:
    await client.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("agent work") as work:
        packet = new_packet(topic)
        await client.dispatch(packet)
    trace_id = work.get_span_context().trace_id
    tid = packet.tracking_id
    assert packet.trace_context.traceparent.split("-")[1] == f"{trace_id:032x}"

    async with client.consume(topic, "g", consumer="c1") as consumer:
        async with asyncio.timeout(20):
            first = await anext(consumer)
            assert first.packet.packet.trace_context == packet.trace_context
            await first.nack()
            second = await anext(consumer)
            assert second.delivery_count == 2
            await second.ack()

    mine = _of(trace_id, spans)
    # Spans end in this order (the caller's "agent work" after its send).
    assert [(s.name, s.kind.name) for s in mine] == [
        (f"send {topic}", "SERVER"),
        (f"send {topic}", "PRODUCER"),
        ("agent work", "INTERNAL"),
        (f"deliver {topic}", "SERVER"),
        (f"nack {topic}", "SERVER"),
        (f"deliver {topic}", "SERVER"),
        (f"ack {topic}", "SERVER"),
    ]
    producer = next(s for s in mine if s.kind is SpanKind.PRODUCER)
    assert _attrs(producer) == {
        "messaging.system": "packetbus",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": topic,
        "messaging.message.id": tid,
    }
    dispatch = next(s for s in mine if s.kind is SpanKind.SERVER and s.name.startswith("send"))
    # The dispatch span is the producer's child; the rest link to the producer.
    assert dispatch.parent is not None
    assert producer.context is not None
    assert dispatch.parent.span_id == producer.context.span_id
    assert _attrs(dispatch) == {
        "messaging.system": "packetbus",
        "messaging.operation.type": "send",
        "messaging.operation.name": "dispatch",
        "messaging.destination.name": topic,
        "messaging.message.id": tid,
    }
    deliveries = [s for s in mine if s.name == f"deliver {topic}"]
    assert [_attrs(s) for s in deliveries] == [
        {
            "messaging.system": "packetbus",
            "messaging.operation.type": "receive",
            "messaging.operation.name": "deliver",
            "messaging.destination.name": topic,
            "messaging.consumer.group.name": "g",
            "messaging.message.id": tid,
        }
    ] * 2
    assert [
        [(link.context.span_id, dict(link.attributes or {})) for link in s.links]
        for s in deliveries
    ] == [
        [(producer.context.span_id, {"messaging.message.id": tid, "packetbus.delivery.attempt": n})]
        for n in (1, 2)
    ]
    for name in ("nack", "ack"):
        [settle] = [s for s in mine if s.name == f"{name} {topic}"]
        assert _attrs(settle) == {
            "messaging.system": "packetbus",
            "messaging.operation.type": "settle",
            "messaging.operation.name": name,
            "messaging.destination.name": topic,
            "messaging.consumer.group.name": "g",
            "messaging.message.id": tid,
        }
        assert [link.context.span_id for link in settle.links] == [producer.context.span_id]
    # One trace id, not only joined by links: each delivery and settlement carries one
    # packet, so the producer span is its parent.
    assert {s.context.trace_id for s in mine if s.context is not None} == {trace_id}
    for span in mine:
        if span.name.split()[0] in ("deliver", "nack", "ack"):
            assert span.parent is not None
            assert span.parent.span_id == producer.context.span_id


async def test_a_resend_under_another_trace_answers_the_original_result(
    client: packetbus.Client, topic: str
) -> None:
    packet = new_packet(topic)
    packet.trace_context.traceparent = f"00-{'a' * 32}-{'b' * 16}-01"
    first = await client.dispatch_batch([packet])
    again = packetbus.Packet()
    again.CopyFrom(packet)
    again.trace_context.traceparent = f"00-{'c' * 32}-{'d' * 16}-00"
    again.trace_context.tracestate = "vendor=x"
    second = await client.dispatch_batch([again])
    assert second[0].receipt == first[0].receipt
    stored = await client.get_packet(packet.tracking_id)
    assert stored.packet.trace_context == packet.trace_context


async def test_a_malformed_traceparent_is_refused_with_its_field_path(
    client: packetbus.Client, topic: str
) -> None:
    packet = new_packet(topic)
    packet.trace_context.traceparent = f"00-{'0' * 32}-{'b' * 16}-01"
    packet.trace_context.tracestate = "Bad Key=1"
    [result] = await client.dispatch_batch([packet])
    assert result.error.code == 3  # INVALID_ARGUMENT
    error = packetbus.PacketbusError.from_status(result.error)
    assert [(v.field, v.description) for v in error.field_violations] == [
        ("trace_context.traceparent", "trace-id must not be all zeros"),
        (
            "trace_context.tracestate",
            "list-member 0 is not key=value (key: lowercase letters, digits and _-*/ with "
            "an optional tenant@system; value: printable ASCII without , =)",
        ),
    ]
    with pytest.raises(packetbus.PacketbusError) as missing:
        await client.get_packet(packet.tracking_id)
    assert missing.value.code.name == "NOT_FOUND"


async def test_a_task_claimed_and_completed_is_traced(
    client: packetbus.Client, spans: InMemorySpanExporter
) -> None:
    queue = client.task_queue(unique("queue"))
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("planner") as planner:
        await queue.post(packetbus.Task(id="t-1", description="d"), origin="planner")
    trace_id = planner.get_span_context().trace_id
    claimed = await queue.claim("worker-1")
    assert claimed is not None
    # The worker carries on the task's trace.
    with tracer.start_as_current_span(
        "work", context=packetbus.trace_context_of(claimed.state.packet.packet)
    ):
        await claimed.complete({"answer": 1})
    mine = _of(trace_id, spans)
    by_name = {s.name: s for s in mine}
    assert set(by_name) == {
        "planner",
        f"send {queue.name}",
        f"claim {queue.name}",
        "work",
        f"complete {queue.name}",
    }
    # The claim carries one task packet: its producer span is the claim span's parent.
    claim = by_name[f"claim {queue.name}"]
    assert claim.context is not None
    assert claim.context.trace_id == trace_id
    post = next(s for s in mine if s.kind is SpanKind.PRODUCER)
    assert post.context is not None
    assert claim.parent is not None
    assert claim.parent.span_id == post.context.span_id
    assert _attrs(by_name[f"claim {queue.name}"]) == {
        "messaging.system": "packetbus",
        "messaging.operation.type": "receive",
        "messaging.operation.name": "claim",
        "messaging.destination.name": queue.name,
        "messaging.message.id": claimed.state.packet.packet.tracking_id,
    }
    assert _attrs(by_name[f"complete {queue.name}"]) == {
        "messaging.system": "packetbus",
        "messaging.operation.type": "settle",
        "messaging.operation.name": "complete",
        "messaging.destination.name": queue.name,
        "messaging.message.id": "t-1",
    }


async def test_subscribe_deliveries_link_to_their_producers(
    client: packetbus.Client, topic: str, spans: InMemorySpanExporter
) -> None:
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("producer") as producer:
        await client.dispatch_batch([new_packet(topic), new_packet(topic)])
    trace_id = producer.get_span_context().trace_id
    async with client.subscribe(topic, start=packetbus.EARLIEST) as subscription:
        async with asyncio.timeout(10):
            got = [await anext(subscription), await anext(subscription)]
    assert all(p.packet.trace_context.traceparent for p in got)
    [delivery] = [s for s in _of(trace_id, spans) if s.name == f"deliver {topic}"]
    assert _attrs(delivery) == {
        "messaging.system": "packetbus",
        "messaging.operation.type": "receive",
        "messaging.operation.name": "deliver",
        "messaging.destination.name": topic,
        "messaging.batch.message_count": 2,
    }
    assert len(delivery.links) == 2


def test_tracing_off_imports_no_opentelemetry_and_the_client_works_without_it(
    redis_url: str,
) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "opentelemetry" or name.startswith("opentelemetry."):
                    raise ImportError("blocked: " + name)
                return None

        sys.meta_path.insert(0, Block())
        import packetbus
        from packetbus_server import ServerConfig, start

        async def main():
            srv = await start(ServerConfig(listen="127.0.0.1:0", redis_url={redis_url!r}))
            try:
                async with await packetbus.Client.connect(f"127.0.0.1:{{srv.port}}") as c:
                    p = packetbus.Packet(
                        origin="a", speech_act=packetbus.SpeechAct.SPEECH_ACT_INFORM,
                        topic="{unique("off")}",
                    )
                    await c.dispatch(p)
                    assert not p.HasField("trace_context")
                    assert packetbus.trace_link(p) is None
            finally:
                await srv.stop(grace=0)
            try:
                await start(ServerConfig(listen="127.0.0.1:0", redis_url={redis_url!r},
                                         tracing=True))
            except ImportError as exc:
                print("refused:", exc)
            print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-2:] == ["refused: blocked: opentelemetry", "[]"]


@pytest.mark.parametrize(
    "traceparent",
    [
        f"00-{'0' * 32}-{'b' * 16}-01",  # all-zero trace-id: well formed, invalid
        "00-not-a-traceparent",
        f"ff-{'a' * 32}-{'b' * 16}-01",  # version ff is forbidden
    ],
)
async def test_a_refused_packets_send_span_with_a_malformed_traceparent_joins_the_call(
    client: packetbus.Client, topic: str, spans: InMemorySpanExporter, traceparent: str
) -> None:
    # README "Traces": a send span is a child of the packet's trace_context, else of
    # the call's. A trace_context that names no valid span is none: the span must
    # join the caller's trace, not start a trace of its own.
    packet = new_packet(topic)
    packet.trace_context.traceparent = traceparent
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("caller") as caller:
        [result] = await client.dispatch_batch([packet])
    assert result.error.code == 3  # INVALID_ARGUMENT
    [send] = [
        s
        for s in spans.get_finished_spans()
        if s.name == f"send {topic}" and s.kind is SpanKind.SERVER
    ]
    assert send.context is not None
    assert send.context.trace_id == caller.get_span_context().trace_id
    assert send.parent is not None
    assert send.status.status_code is trace.StatusCode.ERROR


async def test_live_subscribers_sharing_pages_each_link_every_delivery_to_its_producer(
    client: packetbus.Client, topic: str, spans: InMemorySpanExporter
) -> None:
    [first] = await client.dispatch_batch([new_packet(topic)])
    subscriptions = [client.subscribe(topic, after=first.receipt.cursor) for _ in range(6)]

    async def read(subscription: packetbus.Subscription, n: int) -> list[str]:
        async with subscription:
            return [(await anext(subscription)).packet.tracking_id for _ in range(n)]

    readers = [asyncio.create_task(read(s, 3)) for s in subscriptions]
    await asyncio.sleep(0.5)  # every one at the log's end, woken together by each packet
    tracer = trace.get_tracer("test")
    producers = []
    for _ in range(3):
        with tracer.start_as_current_span("producer") as producer:
            await client.dispatch(new_packet(topic))
        producers.append(producer.get_span_context().trace_id)
        await asyncio.sleep(0.1)
    async with asyncio.timeout(10):
        got = await asyncio.gather(*readers)
    assert len({tuple(g) for g in got}) == 1
    deliveries = [s for s in spans.get_finished_spans() if s.name == f"deliver {topic}"]
    for trace_id in producers:
        linked = [s for s in deliveries if any(k.context.trace_id == trace_id for k in s.links)]
        # Each subscriber's delivery of the producer's packet, once.
        assert len(linked) == 6
    for span in deliveries:
        assert len(span.links) == _attrs(span).get("messaging.batch.message_count", 1)
