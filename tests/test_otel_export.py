"""`packetbus serve --otel` as README "### Traces" describes it: spans go to the OTLP/gRPC
endpoint OTEL_EXPORTER_OTLP_ENDPOINT names, under the service name `packetbus`, and an
endpoint that does not answer never stops the server from serving or from stopping."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc

from tests.conftest import free_port, run_cli, serve_process, unique


class _Collector(otlp_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver (the protocol an OpenTelemetry Collector speaks):
    keeps (service name, span name) of every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str]] = []
        self.received = threading.Event()

    def Export(  # the OTLP service's method name
        self, request: otlp_pb.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> otlp_pb.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            service = next(
                a.value.string_value
                for a in resource_spans.resource.attributes
                if a.key == "service.name"
            )
            for scope_spans in resource_spans.scope_spans:
                self.spans += [(service, span.name) for span in scope_spans.spans]
        self.received.set()
        return otlp_pb.ExportTraceServiceResponse()


@pytest.fixture
def collector() -> Iterator[tuple[str, _Collector]]:
    receiver = _Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    # opentelemetry-proto ships its gRPC stubs untyped.
    otlp_grpc.add_TraceServiceServicer_to_server(receiver, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"http://127.0.0.1:{port}", receiver
    server.stop(grace=None)


def _serve_otel(
    redis_url: str, data_dir: Path, endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, subprocess.Popen[str]]:
    """`serve --otel` over `redis_url`, exporting to `endpoint` with a 1 s export timeout
    and a 0.1 s batch delay: its port and process."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")  # seconds
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # milliseconds
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    port = free_port()
    return port, serve_process(
        port, redis_url, data_dir, "--otel", "--drain-notice", "0", "--grace", "1"
    )


def _dispatch(port: int, topic: str) -> str:
    done = run_cli(
        "--target",
        f"127.0.0.1:{port}",
        "dispatch",
        "--topic",
        topic,
        "--origin",
        "tracer-1",
        "--speech-act",
        "inform",
        "--json",
        '{"data": {"n": 1}}',
    )
    assert done.returncode == 0, done.stderr
    tracking_id: str = json.loads(done.stdout)["trackingId"]
    return tracking_id


def test_serve_otel_sends_each_dispatch_span_to_the_otlp_endpoint(
    redis_url: str,
    tmp_path: Path,
    collector: tuple[str, _Collector],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint, receiver = collector
    port, server = _serve_otel(redis_url, tmp_path, endpoint, monkeypatch)
    try:
        topic = unique("traced")
        _dispatch(port, topic)
        assert receiver.received.wait(10)
        deadline = time.monotonic() + 10
        while ("packetbus", f"send {topic}") not in receiver.spans:
            assert time.monotonic() < deadline, receiver.spans
            time.sleep(0.05)
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)
    assert server.returncode == 0


def test_serve_otel_with_no_collector_serves_and_stops_within_the_export_timeout(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    port, server = _serve_otel(redis_url, tmp_path, closed, monkeypatch)
    try:
        for n in range(3):
            tracking_id = _dispatch(port, unique(f"untraced{n}"))
            got = run_cli("--target", f"127.0.0.1:{port}", "get", tracking_id)
            assert got.returncode == 0, got.stderr
            assert json.loads(got.stdout)["packet"]["trackingId"] == tracking_id
        time.sleep(0.5)  # an export to the closed port is under way
    finally:
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
    # Drain (0 s notice, 1 s grace) and then at most OTEL_EXPORTER_OTLP_TIMEOUT (1 s)
    # for the last spans: not the exporter's default 10 s.
    assert time.monotonic() - started < 5, output
    assert server.returncode == 0, output
    assert "Traceback" not in output
