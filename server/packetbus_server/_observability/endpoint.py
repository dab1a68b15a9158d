"""The /metrics endpoint: prometheus-client's HTTP server in a thread of its own.

A scrape runs in that server's threads, never on the gRPC event loop, so the
store collector's reads (`store_metrics.StoreCollector`) cannot stall an RPC.
One process serves (`serve`), or the supervisor of ``serve --workers N`` serves
what its workers counted in a PROMETHEUS_MULTIPROC_DIR (`worker_metrics`,
prometheus-client's multiprocess mode). Prometheus text format by default,
OpenMetrics when the scraper's Accept header asks for it (prometheus-client's
content negotiation).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from .store_metrics import StoreCollector

if TYPE_CHECKING:
    from .._app import ServerConfig

log = logging.getLogger("packetbus.server")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def parse_address(listen: str) -> tuple[str, int]:
    """(host, port) of a metrics address "HOST:PORT" or "[V6]:PORT" (port 0: any
    free one; an empty host: every interface). Raises ValueError saying the form."""
    form = f"metrics address {listen!r} must be HOST:PORT (or [IPv6]:PORT)"
    if listen.startswith("["):
        host, bracket, port = listen[1:].partition("]:")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            bracket = ""
    else:
        host, bracket, port = listen.rpartition(":")
        if ":" in host:
            bracket = ""  # an IPv6 address needs its brackets
    if not bracket:
        raise ValueError(form)
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"metrics address {listen!r}: the port must be 0 to 65535")
    return host, int(port)


class _Registry(Collector):
    """Everything the default registry holds (this process's metrics), read anew
    at each scrape."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


@dataclass
class MetricsEndpoint:
    """A serving /metrics endpoint; `port` is the bound port (useful with ``:0``),
    `scheme` "http" or "https"."""

    host: str
    port: int
    scheme: str
    _server: WSGIServer
    _thread: threading.Thread

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host or "0.0.0.0"
        return f"{self.scheme}://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port (blocks up to ~0.5 s: the server's poll)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def _serve(config: ServerConfig, collectors: Iterable[Collector]) -> MetricsEndpoint:
    assert config.metrics_listen is not None
    host, port = parse_address(config.metrics_listen)
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    tls = config.tls_cert_file is not None and config.tls_key_file is not None
    try:
        server, thread = start_http_server(
            port,
            host,
            registry,
            certfile=str(config.tls_cert_file) if tls else None,
            keyfile=str(config.tls_key_file) if tls else None,
            client_cafile=str(config.tls_client_ca_file) if config.tls_client_ca_file else None,
            # Mutual TLS when the gRPC port demands it: the same client CA.
            client_auth_required=config.tls_client_ca_file is not None,
        )
    except OSError as exc:
        raise OSError(
            exc.errno or errno.EADDRNOTAVAIL,
            f"cannot serve metrics on {config.metrics_listen}: {exc.strerror or exc}",
        ) from exc
    endpoint = MetricsEndpoint(
        host, server.server_address[1], "https" if tls else "http", server, thread
    )
    log.info("metrics on %s", endpoint.url)
    return endpoint


def serve(config: ServerConfig, redis_url: str, *, embedded: bool) -> MetricsEndpoint | None:
    """Serve this process's metrics and the store's on `config.metrics_listen`
    (None when it is not set). Raises ValueError for an address that is not
    HOST:PORT, OSError when it cannot be bound."""
    if config.metrics_listen is None:
        return None
    return _serve(config, (_Registry(), StoreCollector(redis_url, embedded=embedded)))


@dataclass
class WorkerMetrics:
    """The supervisor's side of ``serve --workers N``: the directory its workers
    count in (PROMETHEUS_MULTIPROC_DIR, set in this process's environment so the
    workers it spawns inherit it) and the endpoint that sums them."""

    directory: str
    endpoint: MetricsEndpoint
    _previous_env: str | None

    def worker_gone(self, pid: int) -> None:
        """A worker died or was replaced: its live gauges (open streams) no longer
        count; its counters still do (prometheus-client's mark_process_dead)."""
        mark_process_dead(pid, self.directory)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        """Stop serving and remove the directory (the workers have exited)."""
        self.endpoint.close()
        shutil.rmtree(self.directory, ignore_errors=True)
        if self._previous_env is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = self._previous_env


def worker_metrics(config: ServerConfig, redis_url: str, *, embedded: bool) -> WorkerMetrics | None:
    """Make the workers' metrics directory and serve their sum plus the store's on
    `config.metrics_listen` (None when it is not set). Call before the workers
    start: they read PROMETHEUS_MULTIPROC_DIR when they import prometheus-client."""
    if config.metrics_listen is None:
        return None
    directory = tempfile.mkdtemp(prefix="packetbus-metrics-")
    registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(registry, directory)  # type: ignore[no-untyped-call]
    try:
        endpoint = _serve(config, (registry, StoreCollector(redis_url, embedded=embedded)))
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = directory
    return WorkerMetrics(directory, endpoint, previous)
