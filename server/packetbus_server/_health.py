"""grpc.health.v1: SERVING only while Redis answers and may not evict (see _eviction)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from grpc_health.v1 import health, health_pb2

from packetbus._stopping import cancel_and_wait

from ._eviction import EvictionGuard
from ._store import PacketStore

log = logging.getLogger(__name__)

SERVICES = ("", "packetbus.v1.PacketService")
PING_TIMEOUT_SECONDS = 1.0


class StoreHealth:
    """Pings Redis every `interval` seconds and publishes the result as health; with
    `guard`, also reads the store's eviction policy each time (NOT_SERVING while
    `guard` refuses writes)."""

    def __init__(
        self,
        store: PacketStore,
        servicer: health.aio.HealthServicer,
        interval: float,
        *,
        on_tick: Callable[[], Awaitable[None]] | None = None,
        guard: EvictionGuard | None = None,
    ):
        self._store = store
        self._guard = guard
        self._on_tick = on_tick
        self._servicer = servicer
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._serving: bool | None = None

    async def check_once(self) -> bool:
        # One second whatever the interval: a store that answers within it serves.
        # A shorter wait (it was the interval, down to 0.2 s) called a live store
        # down on a loaded machine or during a slot migration, and health flapped;
        # a store that is down refuses at once, so a dead one shows no later.
        timeout = PING_TIMEOUT_SECONDS
        answers = await self._store.ping(timeout=timeout)
        ok = answers
        if answers and self._guard is not None:
            # Every tick: a policy changed under a running server, or a store that
            # failed over (reconnected) to one configured otherwise, shows at once.
            # A read that fails (a connection cut after the ping answered) keeps
            # what was last known: the ping says whether the store answers.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(timeout):
                    await self._guard.check()
            ok = self._guard.writes_refused is None
        if ok != self._serving:
            log.log(
                logging.INFO if ok else logging.WARNING,
                "store %s: health %s",
                "answers" if answers else "does not answer",
                "SERVING" if ok else "NOT_SERVING",
            )
            self._serving = ok
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if ok
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for service in SERVICES:
                await self._servicer.set(service, status)
        return ok

    async def _run(self) -> None:
        while True:
            if await self.check_once() and self._on_tick is not None:
                await self._on_tick()
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="packetbus-health")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        await self._servicer.enter_graceful_shutdown()
