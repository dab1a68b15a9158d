"""Sending the server's spans to an OTLP collector (`serve --otel`): an OpenTelemetry
Collector, Jaeger or any OTLP/gRPC endpoint.

The exporter reads the standard environment variables (OpenTelemetry SDK
configuration): OTEL_EXPORTER_OTLP_ENDPOINT (default http://localhost:4317),
OTEL_EXPORTER_OTLP_HEADERS, OTEL_EXPORTER_OTLP_CERTIFICATE, ...; the service is
named by OTEL_SERVICE_NAME, "packetbus" when it is unset.
"""

from __future__ import annotations

import os

MISSING = "--otel needs OpenTelemetry, which is not installed: pip install 'packetbus[otel]'"


def available() -> bool:
    """Whether the otel extra (SDK and OTLP exporter) is installed."""
    from importlib.util import find_spec

    try:
        return all(
            find_spec(name) is not None
            for name in ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.grpc")
        )
    except ModuleNotFoundError:
        return False


def install() -> None:
    """Make a TracerProvider that batches spans to the OTLP/gRPC exporter the
    environment configures, and make it the global one. Raises ModuleNotFoundError
    without the otel extra."""
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = os.environ.get("OTEL_SERVICE_NAME") or "packetbus"
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
