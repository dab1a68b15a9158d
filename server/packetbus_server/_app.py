"""Server assembly and lifecycle: store, services, health, reflection, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from packetbus.v1 import (
    agent_service_pb2,
    carcel_service_pb2,
    consumer_group_service_pb2,
    context_service_pb2,
    custody_service_pb2,
    finding_service_pb2,
    packet_service_pb2,
    policy_service_pb2,
    record_service_pb2,
    task_service_pb2,
)

from ._agent_reaper import AgentReaper
from ._agent_service import AgentService
from ._agent_store import AgentStore
from ._carcel_service import CarcelService
from ._carcel_store import CarcelStore
from ._context_service import ContextService
from ._context_store import ContextStore
from ._custodian import Custodian
from ._custody_service import CustodyService
from ._embedded import EmbeddedValkey
from ._finding_service import FindingService
from ._finding_store import FindingStore
from ._group_service import ConsumerGroupService
from ._group_store import GroupStore
from ._handlers import add_servicer
from ._health import StoreHealth
from ._hop_store import HopStore
from ._key_store import KeyStore
from ._keyring import KEYRING_FILE, SEED_ENV, Keyring
from ._limits import Limits
from ._packet_service import PacketService
from ._policy_service import Governor, PolicyService
from ._policy_store import PolicyStore
from ._policy_watch import PolicyWatch
from ._record_service import RecordService
from ._record_store import RecordStore
from ._store import PacketStore, connect_redis
from ._task_service import TaskService
from ._task_store import TaskStore

log = logging.getLogger("packetbus.server")

VERSION = "0.1.0"
# Upper bound on each drain step besides the RPCs' own grace period.
_STEP_TIMEOUT = 5.0
# Clients ping every 30 s to keep long-lived streams open (packetbus.Client does).
# gRPC's server default refuses pings more often than every 5 minutes on a
# connection that sends no data, and answers the third with GOAWAY
# "too_many_pings": an idle subscriber or consumer would lose its connection.
PERMITTED_PING_INTERVAL_MS = 10_000


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
    # The actor name in this server's custody entries; None: the one stored
    # with its signing keys, so it stays the same across restarts.
    server_id: str | None = None
    # Where the server's Ed25519 signing keys live; None: in `data_dir`.
    signing_key_file: Path | None = None
    # Sign the server's custody entries; off only to measure what signing costs.
    custody_signing: bool = True
    # The governance policy (TOML), reloaded when it changes; None: allow everything.
    policy_file: Path | None = None


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

    async def stop(self, grace: float | None = None) -> None:
        """Drain: report NOT_SERVING, let in-flight RPCs finish, then close the store.

        Every step is bounded, so a stuck step cannot keep the process (and the
        embedded Valkey it owns) alive: the embedded store is always stopped.
        """
        grace = self.config.grace_seconds if grace is None else grace
        steps = (
            ("agent reaper", self._stop_reaper(), _STEP_TIMEOUT),
            ("policy watch", self._stop_policy(), _STEP_TIMEOUT),
            ("health", self.health.stop(), _STEP_TIMEOUT),
            ("rpcs", self.grpc_server.stop(grace), grace + _STEP_TIMEOUT),
            ("store", self.store.close(), _STEP_TIMEOUT),
        )
        for name, step, limit in steps:
            try:
                await asyncio.wait_for(step, limit)
            except TimeoutError:
                log.error("drain: %s did not stop within %.0fs; going on", name, limit)
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)

    async def _stop_reaper(self) -> None:
        if self.agent_reaper is not None:
            await self.agent_reaper.stop()

    async def _stop_policy(self) -> None:
        if self.policy is not None:
            await self.policy.stop()


async def start(config: ServerConfig) -> RunningServer:
    # The keys first: a bad key file fails the start before anything is running.
    keyring = Keyring.load(
        config.signing_key_file or config.data_dir / KEYRING_FILE,
        seed_b64=os.environ.get(SEED_ENV),
    )
    # So is a bad policy file.
    policy_watch = PolicyWatch.load(
        config.policy_file, interval=config.limits.policy_reload_seconds
    )
    async with contextlib.AsyncExitStack() as undo:  # unwinds only if the start fails
        embedded: EmbeddedValkey | None = None
        redis_url = config.redis_url
        if redis_url is None:
            embedded = EmbeddedValkey(config.data_dir)
            await asyncio.to_thread(embedded.start)
            undo.push_async_callback(asyncio.to_thread, embedded.stop)
            redis_url = embedded.url
        redis = await connect_redis(redis_url)
        store = PacketStore(
            redis,
            retention_ms=config.limits.max_ttl_seconds * 1000,
            retry_budget=config.retry_budget_seconds,
        )
        undo.push_async_callback(store.close)
        key_store = KeyStore(redis, retry_budget=config.retry_budget_seconds)
        custodian = Custodian(
            keyring, config.server_id or keyring.server_id, signing=config.custody_signing
        )
        await key_store.publish(custodian.published_keys())

        server = grpc.aio.server(
            maximum_concurrent_rpcs=config.max_concurrent_rpcs,
            options=[
                ("grpc.max_receive_message_length", config.limits.max_request_bytes),
                ("grpc.max_send_message_length", config.limits.max_request_bytes),
                ("grpc.so_reuseport", 1),
                # (GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS)
                ("grpc.http2.min_ping_interval_without_data_ms", PERMITTED_PING_INTERVAL_MS),
                ("grpc.keepalive_permit_without_calls", 1),
            ],
        )
        governor = Governor(
            policy_watch,
            PolicyStore(
                redis,
                store,
                retry_budget=config.retry_budget_seconds,
                retention_ms=config.limits.max_ttl_seconds * 1000,
                carcel_retention_ms=config.limits.carcel_retention_seconds * 1000,
                server_id=custodian.server_id,
            ),
            custodian,
        )
        packets = PacketService(
            store,
            key_store,
            custodian,
            config.limits,
            version=VERSION,
            max_subscribers=config.max_subscribers,
            governor=governor,
        )
        packet_service = packet_service_pb2.DESCRIPTOR.services_by_name["PacketService"]
        custody_service = custody_service_pb2.DESCRIPTOR.services_by_name["CustodyService"]
        group_service = consumer_group_service_pb2.DESCRIPTOR.services_by_name[
            "ConsumerGroupService"
        ]
        carcel_service = carcel_service_pb2.DESCRIPTOR.services_by_name["CarcelService"]
        task_service = task_service_pb2.DESCRIPTOR.services_by_name["TaskService"]
        finding_service = finding_service_pb2.DESCRIPTOR.services_by_name["FindingService"]
        add_servicer(server, packet_service, packets)
        policy_service = policy_service_pb2.DESCRIPTOR.services_by_name["PolicyService"]
        add_servicer(
            server,
            policy_service,
            PolicyService(governor, store, packets, key_store, custodian, config.limits),
        )
        hops = HopStore(redis, retry_budget=config.retry_budget_seconds)
        add_servicer(
            server,
            custody_service,
            CustodyService(
                store,
                key_store,
                packets,
                config.limits,
                carcel=CarcelStore(redis, hops, retry_budget=config.retry_budget_seconds),
                policy=governor.store,
            ),
        )
        groups = GroupStore(
            redis,
            retry_budget=config.retry_budget_seconds,
            carcel_retention_ms=config.limits.carcel_retention_seconds * 1000,
        )
        add_servicer(
            server,
            group_service,
            ConsumerGroupService(
                groups,
                hops,
                custodian,
                config.limits,
                asyncio.Semaphore(config.max_subscribers),
            ),
        )
        agent_store = AgentStore(redis, config.limits, retry_budget=config.retry_budget_seconds)
        tasks = TaskService(
            TaskStore(
                redis,
                hops,
                retry_budget=config.retry_budget_seconds,
                carcel_retention_ms=config.limits.carcel_retention_seconds * 1000,
            ),
            hops,
            key_store,
            custodian,
            config.limits,
            before_claim=agent_store.note_claim,
        )
        add_servicer(server, task_service, tasks)
        agent_service = agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"]
        add_servicer(server, agent_service, AgentService(agent_store, key_store, config.limits))
        agent_reaper = AgentReaper(
            agent_store, tasks.release_held, config.limits.agent_reaper_interval_seconds
        )
        add_servicer(
            server,
            finding_service,
            FindingService(
                FindingStore(redis, retry_budget=config.retry_budget_seconds),
                store,
                packets,
                key_store,
                custodian,
                config.limits,
            ),
        )
        add_servicer(
            server,
            carcel_service,
            CarcelService(
                CarcelStore(redis, hops, retry_budget=config.retry_budget_seconds),
                store,
                custodian,
                config.limits,
            ),
        )
        context_service = context_service_pb2.DESCRIPTOR.services_by_name["ContextService"]
        add_servicer(
            server,
            context_service,
            ContextService(
                ContextStore(redis, retry_budget=config.retry_budget_seconds),
                custodian,
                config.limits,
            ),
        )
        record_service = record_service_pb2.DESCRIPTOR.services_by_name["RecordService"]
        add_servicer(
            server,
            record_service,
            RecordService(
                RecordStore(redis, retry_budget=config.retry_budget_seconds),
                key_store,
                custodian,
                config.limits,
            ),
        )
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (
                packet_service.full_name,
                custody_service.full_name,
                group_service.full_name,
                carcel_service.full_name,
                task_service.full_name,
                finding_service.full_name,
                agent_service.full_name,
                context_service.full_name,
                record_service.full_name,
                policy_service.full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        port = server.add_insecure_port(config.listen)
        if port == 0:
            raise OSError(f"cannot listen on {config.listen}")
        store_health = StoreHealth(
            store,
            health_servicer,
            config.health_interval_seconds,
            on_tick=lambda: _reload_keys(custodian, key_store),
        )
        await store_health.check_once()
        store_health.start()
        await server.start()
        agent_reaper.start()
        policy_watch.start()
        undo.pop_all()
    log.info("packetbus %s listening on port %d (store %s)", VERSION, port, redis_url)
    return RunningServer(
        config, port, server, store, store_health, embedded, agent_reaper, policy_watch
    )


async def _reload_keys(custodian: Custodian, key_store: KeyStore) -> None:
    """After `packetbus keys rotate`: publish the new key, then sign with it."""
    try:
        if custodian.keyring.reload_if_changed():
            await key_store.publish(custodian.published_keys())
            log.info("signing keys reloaded; signing with %s", custodian.keyring.active.key_id)
    except Exception:
        log.exception("could not reload the signing keys; still signing with the old ones")


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
    if srv.policy is not None and srv.policy.path is not None:
        loop.add_signal_handler(signal.SIGHUP, srv.policy.reload_now)
    print(
        f"packetbus {VERSION} serving on {config.listen.rsplit(':', 1)[0]}:{srv.port}",
        flush=True,
    )
    await stop.wait()
    log.info("draining (grace %.1fs)", config.grace_seconds)
    await srv.stop()
    log.info("stopped")


def run_one(config: ServerConfig) -> None:
    """Run one server process until SIGTERM or SIGINT."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        asyncio.run(serve(config))
    else:
        uvloop.run(serve(config))


def run(config: ServerConfig, *, workers: int = 1) -> None:
    """Serve with `workers` processes sharing the listening port (1: this process)."""
    if workers <= 1:
        run_one(config)
        return
    from ._workers import run_workers

    run_workers(config, workers)
