"""Which gateway replica follows a task's answers: a lease in the shared context.

One replica at a time turns a task's answers into A2A events (the *driver*).
It holds a ContextService document (scope ``a2a-drivers``, name
``<agent id>/<task id>``, its data the holder's replica id) written with
compare-and-set and a TTL of `LEASE_SECONDS`, and renews it every third of
that. A replica that dies stops renewing; the document expires, and the next
replica asked about the task (SubscribeToTask, see `event_stream`) takes the
lease and goes on from the answers the task already includes.

A driver checks `Lease.held` before it applies each answer. Should two
replicas ever apply the same answer anyway (a driver paused longer than the
lease), the task store keeps one (`task_store`, ``packetbus.answers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from packetbus import Client, PacketbusError

SCOPE = "a2a-drivers"
LEASE_SECONDS = 5
# Each lease call's deadline: a renewal later than this may already be too late.
_CALL_SECONDS = 1.5
_log = logging.getLogger(__name__)
# A lease someone else holds, or that changed under us: not ours (any more).
_TAKEN = (grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.ABORTED, grpc.StatusCode.NOT_FOUND)


class Lease:
    """The lease on driving task `task_id` of agent `agent_id`, for replica `holder`.

    `acquire` takes it if free; then `renewing` keeps it until released or lost.
    """

    def __init__(
        self,
        client: Client,
        agent_id: str,
        task_id: str,
        holder: str,
        *,
        ttl: int = LEASE_SECONDS,
    ) -> None:
        self._client = client
        self._name = f"{agent_id}/{task_id}"
        self._holder = holder.encode()
        self._ttl = ttl
        self._version = 0
        self._renewer: asyncio.Task[None] | None = None

    @property
    def held(self) -> bool:
        """Whether this replica holds the lease (as of its last renewal)."""
        return self._version > 0

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it; True when taken, then renewed in the
        background until `release`. Raises PacketbusError for a store failure."""
        if self.held:
            return True
        if not await self._put(expected=0):
            return False
        self._renewer = asyncio.create_task(self._renew())
        return True

    async def acquire_within(self, seconds: float) -> bool:
        """`acquire`, tried once a second for up to `seconds`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not await self.acquire():
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(1.0)
        return True

    async def _put(self, *, expected: int) -> bool:
        try:
            document = await self._client.put_context(
                SCOPE,
                self._name,
                self._holder,
                expected_version=expected,
                ttl=self._ttl,
                content_type="text/plain",
                author="a2a-gateway",
                timeout=_CALL_SECONDS,
            )
        except PacketbusError as exc:
            if exc.code in _TAKEN:
                self._version = 0
                return False
            raise
        self._version = document.version
        return True

    async def _renew(self) -> None:
        while self.held:
            await asyncio.sleep(self._ttl / 3)
            try:
                renewed = await self._put(expected=self._version)
            except PacketbusError as exc:
                # Not renewed in time is lost: another replica may take it at expiry.
                _log.warning("lease %s not renewed: %s", self._name, exc)
                self._version = 0
                return
            if not renewed:
                _log.warning("lease %s was taken by another replica", self._name)
                return

    async def release(self) -> None:
        """Give the lease up (only if still ours), so the next driver need not wait."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        if not self.held:
            return
        version, self._version = self._version, 0
        try:
            await self._client.delete_context(
                SCOPE, self._name, expected_version=version, timeout=_CALL_SECONDS
            )
        except PacketbusError as exc:
            if exc.code not in _TAKEN:
                # It expires on its own within LEASE_SECONDS.
                _log.warning("lease %s not released: %s", self._name, exc)
