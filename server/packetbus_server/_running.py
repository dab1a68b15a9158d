"""A started server and how it drains on SIGTERM."""

from __future__ import annotations

import asyncio
import errno
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import grpc

from packetbus.v1 import packet_service_pb2

from . import _streams
from ._agent_reaper import AgentReaper
from ._durability import Durability, inspect_store, plan_durability
from ._embedded import EmbeddedValkey
from ._health import StoreHealth
from ._observability.endpoint import MetricsEndpoint
from ._policy_watch import PolicyWatch
from ._redis_connect import connect_redis
from ._store import PacketStore
from ._streams import Streams
from ._waits import SharedReads

if TYPE_CHECKING:
    from ._app import ServerConfig

log = logging.getLogger("packetbus.server")

# Upper bound on each drain step besides the RPCs' own grace period.
_STEP_TIMEOUT = 5.0
# Blocking reads beyond the stream caps: a few for reads whose stream just ended.
_SPARE_BLOCKING_READS = 64
# The longest block of a blocking read (watchers: 5 s) and then the usual 5 s.
_BLOCKING_READ_TIMEOUT = 10.0


def stream_admission(config: ServerConfig) -> Streams:
    """The caps of `config` on open streams, per kind and per connection."""
    return Streams(
        {
            _streams.SUBSCRIBE: config.max_subscribers,
            _streams.PULL: config.max_subscribers,
            _streams.WATCH: config.max_watchers,
            _streams.HEALTH_WATCH: config.max_watchers,
            _streams.EXPORT: config.max_exports,
            _streams.TRANSFER: config.max_transfers,
            _streams.DISPATCH: config.max_dispatch_streams,
        },
        per_peer=config.max_streams_per_peer,
    )


def published_limits(config: ServerConfig, *, min_client_ping_ms: int) -> packet_service_pb2.Limits:
    """GetServerInfo's limits: `config.limits`, the stream caps of `config` (as
    `stream_admission` applies them) and the keepalive it runs, so a client in any
    language can learn them."""
    limits = config.limits.to_proto()
    limits.streams.CopyFrom(
        packet_service_pb2.StreamLimits(
            max_subscribers=config.max_subscribers,
            max_watchers=config.max_watchers,
            max_exports=config.max_exports,
            max_transfers=config.max_transfers,
            max_streams_per_peer=config.max_streams_per_peer,
            max_dispatch_streams=config.max_dispatch_streams,
        )
    )
    limits.keepalive.CopyFrom(
        packet_service_pb2.KeepaliveSettings(
            server_ping_interval_ms=round(config.keepalive_seconds * 1000),
            server_ping_timeout_ms=round(config.keepalive_timeout_seconds * 1000),
            min_client_ping_interval_ms=min_client_ping_ms,
        )
    )
    return limits


async def blocking_reads(
    config: ServerConfig, redis_url: str, *, cluster: bool, wait_for_fsync: bool = False
) -> SharedReads:
    """A Redis client of their own for waiting streams' blocking reads (see _waits):
    at most one connection per stream that may wait, so it is never exhausted, and
    the connections unary calls and health use are never taken."""
    return SharedReads(
        await connect_redis(
            redis_url,
            max_connections=2 * config.max_subscribers
            + config.max_watchers
            + _SPARE_BLOCKING_READS,
            socket_timeout=_BLOCKING_READ_TIMEOUT,
            cluster=cluster,
            # Group reads write their pending entries (XREADGROUP).
            wait_for_fsync=wait_for_fsync,
        )
    )


async def check_durability(redis_url: str, mode: Durability) -> bool:
    """Whether the server must wait for each write's fsync (WAITAOF) on the external
    store at `redis_url` to give `mode`; logs a warning for each way the store's own
    settings fall short of it (see _durability)."""
    probe = await connect_redis(redis_url, max_connections=2)
    try:
        found = await inspect_store(probe, waitaof=mode is Durability.ALWAYS)
    finally:
        await probe.aclose()
    wait, warnings = plan_durability(mode, found)
    for warning in warnings:
        log.warning("durability %s: %s", mode, warning)
    if wait:
        log.info("durability always: each write waits for the store's fsync (WAITAOF)")
    return wait


def grpc_options(config: ServerConfig, permitted_ping_ms: int) -> list[tuple[str, int]]:
    """The gRPC server's channel options for `config`."""
    return [
        ("grpc.max_receive_message_length", config.limits.max_request_bytes),
        ("grpc.max_send_message_length", config.limits.max_response_bytes),
        ("grpc.so_reuseport", int(config.share_port)),
        # (GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS)
        ("grpc.http2.min_ping_interval_without_data_ms", permitted_ping_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        # Dead peers (see ServerConfig.keepalive_seconds): pinged even on a
        # connection that carries no data (gRPC's default stops after 2).
        ("grpc.keepalive_time_ms", round(config.keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", round(config.keepalive_timeout_seconds * 1000)),
        # grpcio 1.85 waits this long for the keepalive ping's ack (1 min by
        # default), whatever keepalive_timeout_ms says: both are set.
        ("grpc.http2.ping_timeout_ms", round(config.keepalive_timeout_seconds * 1000)),
        ("grpc.http2.max_pings_without_data", 0),
        # Otherwise a second ping on a quiet connection waits 5 minutes.
        ("grpc.http2.min_time_between_pings_ms", round(config.keepalive_seconds * 1000)),
    ]


def redacted(url: str) -> str:
    """`url` with its secrets as ``***``, for a log line or an error message.

    redis-py takes a password in two places (``redis.connection.parse_url``): the
    user info (``redis://user:PASSWORD@host``) and the query string
    (``?password=PASSWORD``, any query parameter becomes a connection argument);
    both are hidden, and so is any other query parameter whose name says it is a
    secret (password, secret, token, a key file's passphrase)."""
    parts = urlsplit(url)
    if parts.password is not None:
        host = parts.netloc.rpartition("@")[2]
        url = urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if any(_is_secret(name) for name, _ in pairs):
        # Cut by hand: urlunsplit would drop the empty authority of unix:///path.
        base, _, rest = url.partition("?")
        fragment = rest.partition("#")[2]
        hidden = [(name, "***" if _is_secret(name) else value) for name, value in pairs]
        url = f"{base}?{urlencode(hidden, safe='/*')}" + (f"#{fragment}" if fragment else "")
    return url


_SECRET_WORDS = ("password", "passwd", "secret", "token", "passphrase")


def _is_secret(name: str) -> bool:
    return any(word in name.lower() for word in _SECRET_WORDS)


def listen(
    server: grpc.aio.Server,
    config: ServerConfig,
    credentials: grpc.ServerCredentials | None = None,
) -> int:
    """Bind `config.listen`, with TLS when `credentials` are given (see _tls); the
    port. Raises OSError with a readable reason."""
    try:
        if credentials is None:
            port: int = server.add_insecure_port(config.listen)
        else:
            port = server.add_secure_port(config.listen, credentials)
    except RuntimeError:  # gRPC says only "Failed to bind"; a port in use is the usual cause
        port = 0
    if port == 0:
        shared = "" if config.share_port else " (only the workers of one server share a port)"
        raise OSError(
            errno.EADDRINUSE,
            f"cannot listen on {config.listen}: address in use or not available{shared}",
        )
    return port


def listen_own_port(
    server: grpc.aio.Server,
    config: ServerConfig,
    credentials: grpc.ServerCredentials | None = None,
) -> int:
    """Bind a worker's own port (config.worker_ports, see _worker_ports) on the
    host of `config.listen`, as `listen` binds the shared one; the port."""
    own = config.worker_ports
    assert own is not None
    host = config.listen.rsplit(":", 1)[0]
    address = f"{host}:{own.ports[own.index]}"
    try:
        if credentials is None:
            port: int = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(
            errno.EADDRINUSE,
            f"worker {own.index} cannot listen on its own port {address}: "
            "address in use or not available",
        )
    return port


@dataclass
class RunningServer:
    """A started server; `port` is the bound port (useful with ``:0``)."""

    config: ServerConfig
    port: int
    grpc_server: grpc.aio.Server
    store: PacketStore
    health: StoreHealth
    embedded: EmbeddedValkey | None
    # Sweeps agents' liveness; stopped first when the server drains.
    agent_reaper: AgentReaper | None = None
    # The governance policy in force, and the task that reloads it.
    policy: PolicyWatch | None = None
    # Admission and drain of streaming RPCs, and their blocking reads' own client.
    streams: Streams | None = None
    reads: SharedReads | None = None
    # The /metrics endpoint (config.metrics_listen), stopped last.
    metrics: MetricsEndpoint | None = None

    @property
    def metrics_port(self) -> int | None:
        """The bound port of the /metrics endpoint (useful with ``:0``), or None."""
        return None if self.metrics is None else self.metrics.port

    async def stop(self, grace: float | None = None, *, notice: float | None = None) -> None:
        """Drain: report NOT_SERVING (Check and Watch) for `notice` seconds while new
        streams are refused, end the open streams with UNAVAILABLE, let in-flight
        unary RPCs finish within `grace` seconds, then close the store. Both default
        to the config's; with `grace` given, the notice to at most that (0: at once).

        Every step is bounded, so a stuck step cannot keep the process (and the
        embedded Valkey it owns) alive: the embedded store is always stopped.
        """
        if notice is None:
            notice = self.config.drain_notice_seconds
            if grace is not None:
                notice = min(notice, grace)
        grace = self.config.grace_seconds if grace is None else grace
        steps = (
            ("agent reaper", self._stop_reaper(), _STEP_TIMEOUT),
            ("policy watch", self._stop_policy(), _STEP_TIMEOUT),
            ("health", self.health.stop(), _STEP_TIMEOUT),
            ("notice", self._give_notice(notice), notice + _STEP_TIMEOUT),
            ("streams", self._end_streams(), 2 * _STEP_TIMEOUT),
            ("rpcs", self.grpc_server.stop(grace), grace + _STEP_TIMEOUT),
            ("store", self._close_store(), _STEP_TIMEOUT),
        )
        for name, step, limit in steps:
            try:
                await asyncio.wait_for(step, limit)
            except TimeoutError:
                log.error("drain: %s did not stop within %.0fs; going on", name, limit)
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.close)
        if self.embedded is not None:
            await self.embedded.stop_keeping()
            await asyncio.to_thread(self.embedded.stop)
        if self.config.tracing:
            from ._observability import tracing

            tracing.disable()

    async def _give_notice(self, seconds: float) -> None:
        # Health checkers see NOT_SERVING while the listener is still open;
        # streams that arrive meanwhile are sent elsewhere.
        if self.streams is not None:
            self.streams.refuse_new()
        await asyncio.sleep(seconds)

    async def _end_streams(self) -> None:
        if self.streams is not None:
            left = await self.streams.drain(_STEP_TIMEOUT)
            if left:
                log.warning("drain: %d streams still open; they get the grace period", left)

    async def _close_store(self) -> None:
        try:
            await self.store.close()
        finally:
            if self.reads is not None:
                await self.reads.redis.aclose()

    async def _stop_reaper(self) -> None:
        if self.agent_reaper is not None:
            await self.agent_reaper.stop()

    async def _stop_policy(self) -> None:
        if self.policy is not None:
            await self.policy.stop()
