"""Several server processes on one port (SO_REUSEPORT), so one host uses every core.

The server is stateless, so workers share nothing but the store and the signing
keys. The supervisor owns the embedded Valkey (if any), starts the workers,
restarts one that dies, and on SIGTERM or SIGINT drains them all before
stopping the store.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.process
import os
import signal
import time
from dataclasses import replace
from types import FrameType

from ._app import ServerConfig, run_one
from ._embedded import EmbeddedValkey
from ._keyring import KEYRING_FILE, SEED_ENV, Keyring

log = logging.getLogger("packetbus.server")

# A worker that dies sooner than this after its start is not restarted: it
# would only die again (a bad setting, a port taken).
_MIN_UPTIME = 5.0


def _worker(config: ServerConfig, log_level: int) -> None:
    # The supervisor handles Ctrl-C for the group; a worker drains on SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=log_level,
        format=f"%(asctime)s %(levelname)s worker-{os.getpid()} %(name)s: %(message)s",
    )
    run_one(config)


def run_workers(config: ServerConfig, workers: int) -> None:
    if config.listen.rsplit(":", 1)[-1] == "0":
        raise ValueError("several workers share one port: give --listen a fixed port")
    embedded: EmbeddedValkey | None = None
    if config.redis_url is None:
        embedded = EmbeddedValkey(config.data_dir)
        embedded.start()
    try:
        key_file = config.signing_key_file or config.data_dir / KEYRING_FILE
        # Created here, once, so the workers do not race to create it.
        Keyring.load(key_file, seed_b64=os.environ.get(SEED_ENV))
        shared = replace(
            config,
            redis_url=embedded.url if embedded is not None else config.redis_url,
            signing_key_file=key_file,
        )
        _supervise(shared, workers)
    finally:
        if embedded is not None:
            embedded.stop()


def _supervise(config: ServerConfig, workers: int) -> None:
    context = multiprocessing.get_context("spawn")
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def launch() -> tuple[multiprocessing.process.BaseProcess, float]:
        process = context.Process(
            target=_worker,
            args=(config, logging.getLogger().getEffectiveLevel()),
            name="packetbus-worker",
        )
        process.start()
        return process, time.monotonic()

    procs = [launch() for _ in range(workers)]
    log.info("%d workers serving on %s", workers, config.listen)
    while not stopping:
        for i, (process, started) in enumerate(procs):
            if process.is_alive():
                continue
            if time.monotonic() - started < _MIN_UPTIME:
                log.error("worker %d exited (%s) right after starting", i, process.exitcode)
                stopping = True
                break
            log.warning("worker %d exited (%s); starting a new one", i, process.exitcode)
            procs[i] = launch()
        time.sleep(0.2)

    log.info("draining %d workers (grace %.1fs)", workers, config.grace_seconds)
    for process, _ in procs:
        if process.is_alive():
            process.terminate()  # SIGTERM: each worker drains
    deadline = time.monotonic() + config.grace_seconds + 15
    for process, _ in procs:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            log.error("a worker did not drain in time; killing it")
            process.kill()
            process.join()
