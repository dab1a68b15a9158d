"""Several server processes on one port (SO_REUSEPORT), so one host uses every core.

Each worker also listens on a port of its own, which GetServerInfo names, so
clients spread evenly over the workers rather than as the kernel's hash of their
connections falls (see _worker_ports).

The server is stateless, so workers share nothing but the store and the signing
keys. The supervisor owns the embedded Valkey (if any), starts the workers,
restarts one that dies, and on SIGTERM or SIGINT drains them all before
stopping the store.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import signal
import threading
import time
from dataclasses import replace
from types import FrameType

from ._app import ServerConfig, run_one, tls_credentials
from ._embedded import EmbeddedValkey
from ._eviction import require_noeviction
from ._exposure import require_safe_listen
from ._keyring import KEYRING_FILE, SEED_ENV, Keyring
from ._observability import logs
from ._observability.endpoint import WorkerMetrics, worker_metrics
from ._redis_connect import connect_redis
from ._retry import with_retries
from ._worker_ports import WorkerPorts, new_turns, pick_ports

log = logging.getLogger("packetbus.server")

# A worker that dies sooner than this after its start is not restarted: it
# would only die again (a bad setting, a port taken).
_MIN_UPTIME = 5.0


def _worker(config: ServerConfig, log_settings: logs.LogSettings) -> None:
    # The supervisor handles Ctrl-C for the group; a worker drains on SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A spawned process starts with logging unconfigured: the supervisor's settings.
    logs.configure(log_settings, worker=os.getpid())
    _drain_when_orphaned()
    run_one(config)


def _drain_when_orphaned() -> None:
    """SIGTERM this worker (it drains) when its supervisor dies, however it dies.

    A SIGKILLed supervisor cannot stop its workers, and its lock on the data dir
    goes with it: the next server on that directory then stops the embedded store
    and starts it again, and workers left running would reattach to it on their
    port, two servers on one home. The supervisor's end of a pipe the child holds
    (multiprocessing's parent sentinel) becomes readable when it exits."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch(sentinel: int) -> None:
        multiprocessing.connection.wait([sentinel])
        log.error("the supervisor (pid %s) is gone; this worker drains and exits", parent.pid)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(
        target=watch, args=(parent.sentinel,), name="packetbus-orphan-watch", daemon=True
    ).start()


def run_workers(config: ServerConfig, workers: int, worker_ports: int | None = None) -> None:
    """Serve with `workers` processes on `config.listen`'s port, worker i also on
    port `worker_ports` + i (None: the port after the shared one; 0: ports the
    kernel picks, for tests)."""
    host, _, port = config.listen.rpartition(":")
    if port == "0":
        raise ValueError("several workers share one port: give --listen a fixed port")
    # Before anything starts: a taken worker port is one line from the command.
    ports = pick_ports(host, workers, int(port) + 1 if worker_ports is None else worker_ports)
    if int(port) in ports:
        # Not yet bound, so the probes took it; every worker shares it, and a client
        # sent there as to one worker's own port would land on any of them.
        raise ValueError(
            f"--worker-ports {worker_ports}: the workers' own ports "
            f"{ports[0]}..{ports[-1]} include the shared port {port} of --listen"
        )
    # Here, once: settings that must not serve, or TLS files that do not check, are
    # one error from the command, not one from each worker. (Each worker then loads
    # the files itself and follows their renewals.)
    require_safe_listen(config)
    tls_credentials(config)
    embedded: EmbeddedValkey | None = None
    if config.redis_url is None:
        embedded = EmbeddedValkey(config.data_dir, config.durability)
        embedded.start()
    try:
        key_file = config.signing_key_file or config.data_dir / KEYRING_FILE
        # Created here, once, so the workers do not race to create it.
        Keyring.load(key_file, seed_b64=os.environ.get(SEED_ENV))
        shared = replace(
            config,
            redis_url=embedded.url if embedded is not None else config.redis_url,
            signing_key_file=key_file,
            share_port=True,  # the workers, and only they, share the port
        )
        if not config.allow_store_eviction:
            # Here, once: a store that may evict is one line from the command,
            # not a traceback from each worker.
            asyncio.run(_require_noeviction(shared.redis_url or ""))
        # The supervisor serves /metrics: its workers' counts summed, and the store's.
        metrics = worker_metrics(shared, shared.redis_url or "", embedded=embedded is not None)
        try:
            if metrics is not None:
                print(f"packetbus metrics on {metrics.endpoint.url}", flush=True)
            _supervise(replace(shared, metrics_listen=None), ports, embedded, metrics)
        finally:
            if metrics is not None:
                metrics.close()
    finally:
        if embedded is not None:
            embedded.stop()


def _keep_store_running(embedded: EmbeddedValkey) -> bool:
    """Start the store again if it exited (the workers reconnect to the same socket
    as after a lost connection); False when it would not start."""
    try:
        embedded.restart_if_exited()
    except Exception as exc:
        log.error("the embedded Valkey did not start again: %s", exc)
        return False
    return True


async def _require_noeviction(url: str) -> None:
    redis = await with_retries(lambda: connect_redis(url, max_connections=2), budget_seconds=10.0)
    try:
        await with_retries(lambda: require_noeviction(redis), budget_seconds=10.0)
    finally:
        await redis.aclose()


def _supervise(
    config: ServerConfig,
    ports: tuple[int, ...],
    embedded: EmbeddedValkey | None,
    metrics: WorkerMetrics | None = None,
) -> None:
    context = multiprocessing.get_context("spawn")
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    # A worker restarted after a crash takes its old port again.
    workers = len(ports)
    turns = new_turns()

    def launch(index: int) -> tuple[multiprocessing.process.BaseProcess, float]:
        own = WorkerPorts(index=index, ports=ports, turns=turns)
        process = context.Process(
            target=_worker,
            args=(replace(config, worker_ports=own), logs.settings()),
            name="packetbus-worker",
        )
        process.start()
        return process, time.monotonic()

    procs = [launch(i) for i in range(workers)]
    log.info("%d workers serving on %s", workers, config.listen)
    log.info("each worker also on its own port: %s", ", ".join(map(str, ports)))
    store_retry_at = 0.0  # after a failed restart of the store, the next try
    while not stopping:
        due = embedded is not None and time.monotonic() >= store_retry_at
        if due and embedded is not None and not _keep_store_running(embedded):
            store_retry_at = time.monotonic() + 10
        for i, (process, started) in enumerate(procs):
            if process.is_alive():
                continue
            if time.monotonic() - started < _MIN_UPTIME:
                log.error("worker %d exited (%s) right after starting", i, process.exitcode)
                stopping = True
                break
            log.warning("worker %d exited (%s); starting a new one", i, process.exitcode)
            _gone(process, metrics)
            procs[i] = launch(i)
        time.sleep(0.2)

    log.info("draining %d workers (grace %.1fs)", workers, config.grace_seconds)
    for process, _ in procs:
        if process.is_alive():
            process.terminate()  # SIGTERM: each worker drains
    deadline = time.monotonic() + config.drain_notice_seconds + config.grace_seconds + 15
    for process, _ in procs:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            log.error("a worker did not drain in time; killing it")
            process.kill()
            process.join()
    for process, _ in procs:
        _gone(process, metrics)


def _gone(process: multiprocessing.process.BaseProcess, metrics: WorkerMetrics | None) -> None:
    """A worker that exited: its live gauges no longer count (see WorkerMetrics)."""
    if metrics is not None and process.pid is not None:
        metrics.worker_gone(process.pid)
