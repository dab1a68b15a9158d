"""Server assembly and lifecycle: start (keys, policy, store, services, listeners,
health), stop with a drain on SIGTERM, and the process entry points.

The settings are in _server_config, the store's connection and probes in
_store_connection, the services and health/reflection wiring in _service_wiring."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator

import grpc

from . import _gc
from ._access import Gate
from ._access.setup import authenticators
from ._custodian import Custodian
from ._exposure import authenticates, require_safe_listen
from ._health import StoreHealth
from ._key_store import KeyStore
from ._keyring import KEYRING_FILE, SEED_ENV, Keyring
from ._observability import endpoint
from ._policy_watch import PolicyWatch
from ._running import RunningServer as RunningServer  # re-exported: packetbus_server
from ._running import (
    grpc_options,
    listen,
    listen_own_port,
    redacted,
    stream_admission,
)
from ._server_config import ServerConfig as ServerConfig  # re-exported: packetbus_server
from ._server_config import default_data_dir as default_data_dir  # re-exported
from ._server_config import tls_credentials as tls_credentials  # re-exported: _workers
from ._service_wiring import wire_services
from ._store_connection import connect_store, start_budget

log = logging.getLogger("packetbus.server")

VERSION = "0.1.0"
# Clients ping every 30 s to keep long-lived streams open (packetbus.Client does).
# gRPC's server default refuses pings more often than every 5 minutes on a
# connection that sends no data, and answers the third with GOAWAY
# "too_many_pings": an idle subscriber or consumer would lose its connection.
PERMITTED_PING_INTERVAL_MS = 10_000


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
        connection = await connect_store(config, undo)
        embedded, redis_url = connection.embedded, connection.redis_url
        store, guard, reads = connection.store, connection.guard, connection.reads
        streams = stream_admission(config)
        key_store = KeyStore(connection.redis, retry_budget=config.retry_budget_seconds)
        custodian = Custodian(
            keyring, config.server_id or keyring.server_id, signing=config.custody_signing
        )
        await key_store.publish(custodian.published_keys(), budget_seconds=start_budget(config))

        server = grpc.aio.server(
            maximum_concurrent_rpcs=config.max_concurrent_rpcs,
            # Writes refused while the store may evict (none when that is allowed).
            interceptors=() if config.allow_store_eviction else (guard.interceptor(),),
            options=grpc_options(config, PERMITTED_PING_INTERVAL_MS),
        )
        # Every call of packetbus's own services passes the gate (health and
        # reflection stay open: load balancers probe without credentials).
        gate = gate or Gate(door, authorizer=policy_watch.authorizer)
        wired = wire_services(
            server,
            config,
            connection,
            key_store=key_store,
            custodian=custodian,
            policy_watch=policy_watch,
            gate=gate,
            streams=streams,
            version=VERSION,
            min_client_ping_ms=PERMITTED_PING_INTERVAL_MS,
        )
        health_servicer, agent_reaper = wired.health, wired.agent_reaper
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
        _say(f"packetbus metrics on {srv.metrics.url}")
    _say(f"packetbus {VERSION} serving on {config.listen.rsplit(':', 1)[0]}:{srv.port}")
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


def _say(line: str) -> None:
    """Print `line` on stdout in one write: the workers of `serve --workers` share
    the supervisor's stdout, and print() writes the text and its newline apart when
    unbuffered (PYTHONUNBUFFERED), so two workers' ready lines ran into one line
    ("...:21264packetbus 0.1.0 serving on ...") and a reader counting lines missed one.
    A write of less than PIPE_BUF bytes to a pipe is atomic (POSIX)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
