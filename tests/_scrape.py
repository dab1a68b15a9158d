"""Scraping a /metrics endpoint over real HTTP(S) and reading its samples."""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

# (sample name, sorted (label, value) pairs) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape_text(url: str, *, context: ssl.SSLContext | None = None, accept: str = "") -> str:
    """The body of GET `url` (raises on an HTTP error)."""
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10, context=context) as reply:
        body: bytes = reply.read()
        return body.decode()


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text exposition."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(url: str, *, context: ssl.SSLContext | None = None) -> Samples:
    """Scrape `url` off the event loop (the server under test may share it)."""
    return parse(await asyncio.to_thread(scrape_text, url, context=context))


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample `name` with exactly `labels`; 0 when absent (a counter not yet seen)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def rpc(service: str, method: str, grpc_type: str = "unary") -> Mapping[str, str]:
    """go-grpc-prometheus's labels of one method."""
    return {"grpc_service": service, "grpc_method": method, "grpc_type": grpc_type}


def _unsettled(samples: Samples, methods: tuple[str, ...]) -> list[str]:
    """Methods of `methods` with calls started and not yet counted as handled."""
    started: dict[str, float] = {}
    handled: dict[str, float] = {}
    for (name, labels), count in samples.items():
        method = dict(labels).get("grpc_method", "")
        if method not in methods:
            continue
        if name == "grpc_server_started_total":
            started[method] = started.get(method, 0) + count
        elif name == "grpc_server_handled_total":
            handled[method] = handled.get(method, 0) + count
    return [m for m in methods if started.get(m, 0) != handled.get(m, 0)]


async def scrape_settled(url: str, *methods: str, context: ssl.SSLContext | None = None) -> Samples:
    """Scrape `url` once every call of `methods` that started has been counted as
    handled. grpc.aio sends an aborted call's status before the handler's own end
    (where it is counted) runs, so a client may see its answer a moment before the
    server has counted it."""
    for _ in range(100):
        samples = await scrape(url, context=context)
        if not _unsettled(samples, methods):
            return samples
        await asyncio.sleep(0.05)
    raise AssertionError(f"calls of {_unsettled(samples, methods)} never ended")
