"""grpc.health.v1: SERVING only while Redis answers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from grpc_health.v1 import health, health_pb2

from packetbus._stopping import cancel_and_wait

from ._store import PacketStore

log = logging.getLogger(__name__)

SERVICES = ("", "packetbus.v1.PacketService")


class StoreHealth:
    """Pings Redis every `interval` seconds and publishes the result as health."""

    def __init__(
        self,
        store: PacketStore,
        servicer: health.aio.HealthServicer,
        interval: float,
        *,
        on_tick: Callable[[], Awaitable[None]] | None = None,
    ):
        self._store = store
        self._on_tick = on_tick
        self._servicer = servicer
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._serving: bool | None = None

    async def check_once(self) -> bool:
        ok = await self._store.ping(timeout=max(0.2, min(1.0, self._interval)))
        if ok != self._serving:
            log.log(
                logging.INFO if ok else logging.WARNING,
                "store %s: health %s",
                "answers" if ok else "does not answer",
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
