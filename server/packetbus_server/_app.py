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
from grpc_health.v1 import health_pb2
from redis.asyncio.cluster import RedisCluster

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
    topic_service_pb2,
)

from . import _gc
from ._access import Gate
from ._access.setup import authenticators
from ._agent_reaper import AgentReaper
from ._agent_service import AgentService
from ._agent_store import AgentStore
from ._carcel_service import CarcelService
from ._carcel_store import CarcelStore
from ._context_service import ContextService
from ._context_store import ContextStore
from ._custodian import Custodian
from ._custody_service import CustodyService
from ._durability import Durability
from ._embedded import EmbeddedValkey
from ._eviction import EvictionGuard, require_noeviction
from ._export_token import FINDINGS, TASKS
from ._exposure import authenticates, require_safe_listen
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
from ._observability import endpoint
from ._packet_service import PacketService
from ._placed_packets import PlacedPackets
from ._policy_service import Governor, PolicyService
from ._policy_store import PolicyStore
from ._policy_watch import PolicyWatch
from ._record_service import RecordService
from ._record_store import RecordStore
from ._retry import with_retries
from ._running import RunningServer as RunningServer  # re-exported: packetbus_server
from ._running import (
    blocking_reads,
    check_durability,
    grpc_options,
    listen,
    listen_own_port,
    published_limits,
    redacted,
    stream_admission,
)
from ._stock_services import HealthServicer, add_health_and_reflection
from ._store import PacketStore, connect_redis
from ._task_service import TaskService
from ._task_store import TaskStore
from ._tls import ReloadingCredentials, TlsPaths
from ._topic_service import TopicService
from ._topic_store import TopicStore
from ._worker_ports import WorkerPorts

log = logging.getLogger("packetbus.server")

VERSION = "0.1.0"
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
    # Dead peers: the server pings a connection that has been quiet this long and
    # closes it (ending its streams and freeing their slots) when the ping is not
    # answered within the timeout. A peer that vanished without FIN/RST is so
    # noticed within keepalive_seconds + keepalive_timeout_seconds (40 s).
    keepalive_seconds: float = 30.0
    keepalive_timeout_seconds: float = 10.0
    # On SIGTERM, health says NOT_SERVING this long before open streams end
    # (UNAVAILABLE: clients resume elsewhere) and the listener closes.
    drain_notice_seconds: float = 2.0
    # Open streams per server, by kind (Subscribe and Pull: max_subscribers each),
    # and per connection over all kinds; beyond them: RESOURCE_EXHAUSTED at once.
    max_watchers: int = 1024  # WatchTasks, WatchAgents, WatchContext (and Health.Watch)
    max_exports: int = 64  # ExportPackets
    max_transfers: int = 256  # GetContext, PutContext
    max_streams_per_peer: int = 512
    # Redis connections for unary calls and health; waiting streams have their own.
    max_redis_connections: int = 1024
    # Serve even when the store's maxmemory-policy is not noeviction (see _eviction):
    # acknowledged packets may then be evicted. Off: such a store is refused.
    allow_store_eviction: bool = False
    # What a machine crash may take of acknowledged writes (see _durability):
    # everysec (~1 s of them) or always (nothing: acknowledged once fsynced).
    durability: Durability = Durability.EVERYSEC
    # Bind the port with SO_REUSEPORT: only the workers of one server (--workers)
    # share a port; any other server there would split the clients between them.
    share_port: bool = False
    # A worker of `serve --workers N`: its own port besides the shared one, and the
    # turns by which GetServerInfo spreads clients over the workers (_worker_ports).
    worker_ports: WorkerPorts | None = None
    # Identity at the door (README "Security"; see _access). TLS: this certificate
    # chain and key (PEM), reloaded when the files change; with a client CA, every
    # client must present a certificate it signed (mutual TLS) and the principal is
    # its SPIFFE ID URI SAN, else its subject CN.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    # Bearer tokens: JWTs verified against these public keys (a JWKS file and/or
    # PEM files; Ed25519, ES256, RS256), the issuer and audience checked; the
    # principal is the token's `sub`.
    jwt_jwks_file: Path | None = None
    jwt_public_key_files: tuple[Path, ...] = ()
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    # Trust the identity a mesh sidecar that terminated mTLS forwards in Envoy's
    # x-forwarded-client-cert header. Only when no one else can reach the port.
    trust_xfcc: bool = False
    # Listen beyond loopback without TLS and authentication (refused otherwise).
    insecure: bool = False
    # OpenTelemetry spans (README "Traces"; needs the otel extra): to the global
    # TracerProvider, or with otlp_export to an OTLP exporter this process sets up
    # from the standard OTEL_* environment variables. Off: no opentelemetry import.
    tracing: bool = False
    otlp_export: bool = False
    # Serve Prometheus /metrics on this HOST:PORT (port 0: any free one); beyond
    # loopback only with TLS (the tls_* files above) or `insecure`. None: off.
    metrics_listen: str | None = None


def tls_credentials(config: ServerConfig) -> ReloadingCredentials | None:
    """The TLS credentials `config` names (files checked now: TlsFilesError), or
    None for plaintext."""
    if config.tls_cert_file is None or config.tls_key_file is None:
        return None
    return ReloadingCredentials(
        TlsPaths(config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file)
    )


async def start(config: ServerConfig, *, gate: Gate | None = None) -> RunningServer:
    """Start a server; `gate` replaces the one `config` describes (tests of one part
    of the access rules before the rest is configured).

    Raises TlsSettingsError or InsecureListenError (ValueErrors) for settings that
    must not serve (see _exposure) and TlsFilesError for TLS files that do not
    check, before anything starts."""
    require_safe_listen(config)
    tls = tls_credentials(config)
    if config.tracing:
        from ._observability import otlp, tracing

        if config.otlp_export:
            otlp.install()
        tracing.enable()
    # The keys first: a bad key file fails the start before anything is running.
    keyring = Keyring.load(
        config.signing_key_file or config.data_dir / KEYRING_FILE,
        seed_b64=os.environ.get(SEED_ENV),
    )
    # So is a bad policy file, or one that turns authorization on while nothing
    # proves who calls.
    policy_watch = PolicyWatch.load(
        config.policy_file,
        interval=config.limits.policy_reload_seconds,
        authenticated=gate.authenticates if gate is not None else authenticates(config),
    )
    # And bad JWT key files or settings (ValueError).
    door = authenticators(config) if gate is None else ()
    async with contextlib.AsyncExitStack() as undo:  # unwinds only if the start fails
        embedded: EmbeddedValkey | None = None
        redis_url = config.redis_url
        if redis_url is None:
            embedded = EmbeddedValkey(config.data_dir, config.durability)
            await asyncio.to_thread(embedded.start)
            undo.push_async_callback(asyncio.to_thread, embedded.stop)
            embedded.keep_running()
            undo.push_async_callback(embedded.stop_keeping)
            redis_url = embedded.url
        # The embedded store fsyncs as asked; an external one is asked how it does.
        # Both first calls retry like any other: a store that is restarting while this
        # process starts (a worker started as its supervisor restarts the embedded
        # store) is the same transient state as one call's lost connection.
        url = redis_url
        wait_fsync = embedded is None and await with_retries(
            lambda: check_durability(url, config.durability),
            budget_seconds=config.retry_budget_seconds,
        )
        redis = await with_retries(
            lambda: connect_redis(
                url, max_connections=config.max_redis_connections, wait_for_fsync=wait_fsync
            ),
            budget_seconds=config.retry_budget_seconds,
        )
        undo.push_async_callback(redis.aclose)
        # A store that may evict: no start (retried like any read: a connection
        # cut now is no answer).
        guard = EvictionGuard(redis, allow_eviction=config.allow_store_eviction)
        if not config.allow_store_eviction:
            await with_retries(
                lambda: require_noeviction(redis), budget_seconds=config.retry_budget_seconds
            )
        await with_retries(guard.check, budget_seconds=config.retry_budget_seconds)
        reads = await blocking_reads(
            config, redis_url, cluster=isinstance(redis, RedisCluster), wait_for_fsync=wait_fsync
        )
        undo.push_async_callback(reads.redis.aclose)
        streams = stream_admission(config)
        store = PacketStore(
            redis,
            retention_ms=config.limits.max_ttl_seconds * 1000,
            retry_budget=config.retry_budget_seconds,
            reads=reads,
        )
        undo.push_async_callback(store.close)
        # Every decision about time follows the store's clock (see _clock): learn it
        # before anything is judged, then keep it fresh.
        clock = store.clock
        await with_retries(clock.sync, budget_seconds=config.retry_budget_seconds)
        clock.start()
        key_store = KeyStore(redis, retry_budget=config.retry_budget_seconds)
        custodian = Custodian(
            keyring, config.server_id or keyring.server_id, signing=config.custody_signing
        )
        await key_store.publish(custodian.published_keys())

        server = grpc.aio.server(
            maximum_concurrent_rpcs=config.max_concurrent_rpcs,
            # Writes refused while the store may evict (none when that is allowed).
            interceptors=() if config.allow_store_eviction else (guard.interceptor(),),
            options=grpc_options(config, PERMITTED_PING_INTERVAL_MS),
        )
        # Every call of packetbus's own services passes the gate (health and
        # reflection stay open: load balancers probe without credentials).
        gate = gate or Gate(door, authorizer=policy_watch.authorizer)
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
        # Task, finding and record packets, found by tracking id (_placed_packets).
        placed = PlacedPackets(redis, retry_budget=config.retry_budget_seconds)
        packets = PacketService(
            store,
            key_store,
            custodian,
            config.limits,
            version=VERSION,
            max_subscribers=config.max_subscribers,
            governor=governor,
            published_limits=published_limits(
                config, min_client_ping_ms=PERMITTED_PING_INTERVAL_MS
            ),
            clock=clock,
            workers=config.worker_ports,
        )
        packets.serve_placed(placed)
        packet_service = packet_service_pb2.DESCRIPTOR.services_by_name["PacketService"]
        custody_service = custody_service_pb2.DESCRIPTOR.services_by_name["CustodyService"]
        group_service = consumer_group_service_pb2.DESCRIPTOR.services_by_name[
            "ConsumerGroupService"
        ]
        carcel_service = carcel_service_pb2.DESCRIPTOR.services_by_name["CarcelService"]
        task_service = task_service_pb2.DESCRIPTOR.services_by_name["TaskService"]
        finding_service = finding_service_pb2.DESCRIPTOR.services_by_name["FindingService"]
        add_servicer(server, packet_service, packets, streams, gate=gate)
        policy_service = policy_service_pb2.DESCRIPTOR.services_by_name["PolicyService"]
        add_servicer(
            server,
            policy_service,
            PolicyService(
                governor, store, packets, key_store, custodian, config.limits, clock=clock
            ),
            streams,
            gate=gate,
        )
        hops = HopStore(redis, retry_budget=config.retry_budget_seconds)
        custody = CustodyService(
            store,
            key_store,
            packets,
            config.limits,
            carcel=CarcelStore(
                redis,
                hops,
                retry_budget=config.retry_budget_seconds,
                expander=store.expander,
            ),
            policy=governor.store,
            clock=clock,
        )
        add_servicer(server, custody_service, custody, streams, gate=gate)
        topics = TopicStore(
            redis,
            retry_budget=config.retry_budget_seconds,
            retention_ms=config.limits.max_ttl_seconds * 1000,
        )
        topic_service = topic_service_pb2.DESCRIPTOR.services_by_name["TopicService"]
        add_servicer(server, topic_service, TopicService(topics, config.limits), streams, gate=gate)
        groups = GroupStore(
            redis,
            retry_budget=config.retry_budget_seconds,
            carcel_retention_ms=config.limits.carcel_retention_seconds * 1000,
            reads=reads,
            retention=topics,
            expander=store.expander,
            note_topics=store.note_topics,
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
                clock=clock,
            ),
            streams,
            gate=gate,
        )
        agent_store = AgentStore(
            redis, config.limits, retry_budget=config.retry_budget_seconds, reads=reads
        )
        tasks = TaskService(
            TaskStore(
                redis,
                hops,
                retry_budget=config.retry_budget_seconds,
                carcel_retention_ms=config.limits.carcel_retention_seconds * 1000,
                reads=reads,
                note_queues=store.note_queues,
            ),
            hops,
            key_store,
            custodian,
            config.limits,
            before_claim=agent_store.note_claim,
            clock=clock,
            governor=governor,
            placed=placed,
        )
        add_servicer(server, task_service, tasks, streams, gate=gate)
        custody.serve_placed(TASKS, tasks.export_pages)
        agent_service = agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"]
        add_servicer(
            server,
            agent_service,
            AgentService(agent_store, key_store, config.limits, clock=clock),
            streams,
            gate=gate,
        )
        agent_reaper = AgentReaper(
            agent_store, tasks.release_held, config.limits.agent_reaper_interval_seconds
        )
        findings = FindingService(
            FindingStore(redis, retry_budget=config.retry_budget_seconds),
            store,
            packets,
            key_store,
            custodian,
            config.limits,
            clock=clock,
            governor=governor,
            placed=placed,
        )
        add_servicer(server, finding_service, findings, streams, gate=gate)
        custody.serve_placed(FINDINGS, findings.export_pages)
        add_servicer(
            server,
            carcel_service,
            CarcelService(
                CarcelStore(
                    redis,
                    hops,
                    retry_budget=config.retry_budget_seconds,
                    expander=store.expander,
                ),
                store,
                custodian,
                config.limits,
                clock=clock,
            ),
            streams,
            gate=gate,
        )
        context_service = context_service_pb2.DESCRIPTOR.services_by_name["ContextService"]
        add_servicer(
            server,
            context_service,
            ContextService(
                ContextStore(redis, retry_budget=config.retry_budget_seconds, reads=reads),
                custodian,
                config.limits,
                clock=clock,
                governor=governor,
            ),
            streams,
            gate=gate,
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
                clock=clock,
                governor=governor,
                placed=placed,
            ),
            streams,
            gate=gate,
        )
        health_servicer = HealthServicer(streams)
        add_health_and_reflection(
            server,
            health_servicer,
            streams,
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
                topic_service.full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            ),
        )
        port = listen(server, config, None if tls is None else tls.credentials())
        if config.worker_ports is not None:
            listen_own_port(server, config, None if tls is None else tls.credentials())
        metrics = endpoint.serve(config, redis_url, embedded=embedded is not None)
        if metrics is not None:
            undo.push_async_callback(asyncio.to_thread, metrics.close)
        store_health = StoreHealth(
            store,
            health_servicer,
            config.health_interval_seconds,
            on_tick=lambda: _reload_keys(custodian, key_store),
            guard=guard,
        )
        await store_health.check_once()
        store_health.start()
        await server.start()
        agent_reaper.start()
        policy_watch.start()
        undo.pop_all()
    log.info(
        "packetbus %s listening on port %d (%s; store %s)",
        VERSION,
        port,
        "plaintext" if tls is None else "mutual TLS" if config.tls_client_ca_file else "TLS",
        redacted(redis_url),
    )
    return RunningServer(
        config,
        port,
        server,
        store,
        store_health,
        embedded,
        agent_reaper,
        policy_watch,
        streams,
        reads,
        metrics,
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
async def running(
    config: ServerConfig, *, gate: Gate | None = None
) -> AsyncIterator[RunningServer]:
    srv = await start(config, gate=gate)
    try:
        yield srv
    finally:
        await srv.stop(grace=0, notice=0)


async def serve(config: ServerConfig) -> None:
    """Run until SIGTERM or SIGINT, then drain."""
    srv = await start(config)
    _gc.settle_heap()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if srv.policy is not None and srv.policy.path is not None:
        loop.add_signal_handler(signal.SIGHUP, srv.policy.reload_now)
    if srv.metrics is not None:
        print(f"packetbus metrics on {srv.metrics.url}", flush=True)
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


def run(config: ServerConfig, *, workers: int = 1, worker_ports: int | None = None) -> None:
    """Serve with `workers` processes sharing the listening port (1: this process),
    each also on a port of its own from `worker_ports` (see _workers.run_workers)."""
    if workers <= 1:
        run_one(config)
        return
    from ._workers import run_workers

    run_workers(config, workers, worker_ports)
