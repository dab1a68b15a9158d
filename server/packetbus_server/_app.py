"""Server assembly and lifecycle: store, services, health, reflection, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from packetbus.v1 import packet_service_pb2

from ._embedded import EmbeddedValkey
from ._handlers import add_servicer
from ._health import StoreHealth
from ._limits import Limits
from ._packet_service import PacketService
from ._store import PacketStore, connect_redis

log = logging.getLogger("packetbus.server")

VERSION = "0.1.0"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "packetbus"


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    listen: str = "127.0.0.1:50051"
    # None: start the embedded Valkey in `data_dir`.
    redis_url: str | None = None
    data_dir: Path = field(default_factory=default_data_dir)
    limits: Limits = field(default_factory=Limits)
    # How long in-flight RPCs may finish after SIGTERM.
    grace_seconds: float = 10.0
    # Upper bound on retrying one Redis operation when the RPC has no deadline.
    retry_budget_seconds: float = 10.0
    health_interval_seconds: float = 1.0
    max_subscribers: int = 512
    # Beyond this many RPCs at once (subscriptions included) gRPC answers
    # RESOURCE_EXHAUSTED instead of queueing without bound.
    max_concurrent_rpcs: int = 4096
    server_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}")


@dataclass
class RunningServer:
    """A started server; `port` is the bound port (useful with ``:0``)."""

    config: ServerConfig
    port: int
    grpc_server: grpc.aio.Server
    store: PacketStore
    health: StoreHealth
    embedded: EmbeddedValkey | None

    async def stop(self, grace: float | None = None) -> None:
        """Drain: report NOT_SERVING, let in-flight RPCs finish, then close the store."""
        await self.health.stop()
        await self.grpc_server.stop(self.config.grace_seconds if grace is None else grace)
        await self.store.close()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)


async def start(config: ServerConfig) -> RunningServer:
    embedded: EmbeddedValkey | None = None
    redis_url = config.redis_url
    if redis_url is None:
        embedded = EmbeddedValkey(config.data_dir)
        await asyncio.to_thread(embedded.start)
        redis_url = embedded.url
    try:
        redis = await connect_redis(redis_url)
    except Exception:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        raise
    store = PacketStore(
        redis,
        retention_ms=config.limits.max_ttl_seconds * 1000,
        retry_budget=config.retry_budget_seconds,
    )

    server = grpc.aio.server(
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", config.limits.max_request_bytes),
            ("grpc.max_send_message_length", config.limits.max_request_bytes),
            ("grpc.so_reuseport", 1),
        ],
    )
    add_servicer(
        server,
        packet_service_pb2.DESCRIPTOR.services_by_name["PacketService"],
        PacketService(
            store,
            config.limits,
            version=VERSION,
            server_id=config.server_id,
            max_subscribers=config.max_subscribers,
        ),
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            packet_service_pb2.DESCRIPTOR.services_by_name["PacketService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    port = server.add_insecure_port(config.listen)
    if port == 0:
        await store.close()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        raise OSError(f"cannot listen on {config.listen}")
    store_health = StoreHealth(store, health_servicer, config.health_interval_seconds)
    await store_health.check_once()
    store_health.start()
    await server.start()
    log.info("packetbus %s listening on port %d (store %s)", VERSION, port, redis_url)
    return RunningServer(config, port, server, store, store_health, embedded)


@contextlib.asynccontextmanager
async def running(config: ServerConfig) -> AsyncIterator[RunningServer]:
    srv = await start(config)
    try:
        yield srv
    finally:
        await srv.stop(grace=0)


async def serve(config: ServerConfig) -> None:
    """Run until SIGTERM or SIGINT, then drain."""
    srv = await start(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"packetbus {VERSION} serving on {config.listen.rsplit(':', 1)[0]}:{srv.port}",
        flush=True,
    )
    await stop.wait()
    log.info("draining (grace %.1fs)", config.grace_seconds)
    await srv.stop()
    log.info("stopped")


def run(config: ServerConfig) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        asyncio.run(serve(config))
    else:
        uvloop.run(serve(config))
