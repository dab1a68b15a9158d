"""Taking over a task whose answers nobody follows any more (its replica died).

The replica that received a task's message follows its answers in
`InboxExecutor`, holding the task's `lease`. When that replica is gone, the
answers keep arriving in the task's reply inbox but nobody turns them into
events. `TaskDriver.take_over` is what any other replica runs while it serves
SubscribeToTask for the task (`event_stream`): once a second it tries to take
the lease (GetTask tries once: `nudge`); with it, it applies the answers the task does not include yet
(``packetbus.answers``, see `answers`) through a2a-sdk's `TaskManager` and the
shared task store, and publishes each event on the task's event topic,
exactly as the first replica would have, until the agent's turn ends.
"""

from __future__ import annotations

import asyncio
import logging

from a2a.server.cluster.event_stream import VersionedEvent
from a2a.server.cluster.task_store import ConcurrentTaskModificationError
from a2a.server.context import ServerCallContext
from a2a.server.tasks import TaskManager
from a2a.types.a2a_pb2 import Task

from packetbus import PacketbusError

from .answers import (
    INTERRUPTED_STATES,
    TERMINAL_STATES,
    answer_event,
    answers_included,
    ends_turn,
    follow_answers,
)
from .auth import Principals
from .event_stream import TopicEventStream
from .lease import Lease
from .parts import PartCodec
from .task_store import ContextTaskStore

_log = logging.getLogger(__name__)
_RETRY_SECONDS = 1.0


def _needs_driver(task: Task | None) -> bool:
    # A task waiting for the user's input has no answers to follow until it
    # gets a message, and that message's replica drives it.
    return task is not None and task.status.state not in TERMINAL_STATES | INTERRUPTED_STATES


class TaskDriver:
    """Takes over agent `agent_id`'s tasks for replica `holder` (see the module docstring)."""

    def __init__(
        self,
        clients: Principals,
        agent_id: str,
        holder: str,
        store: ContextTaskStore,
        stream: TopicEventStream,
    ) -> None:
        self._clients = clients
        self._agent_id = agent_id
        self._holder = holder
        self._store = store
        self._stream = stream
        self._parts = PartCodec(clients.default)
        # Background takeovers started by `nudge`, by task id (at most one each).
        self._nudged: dict[str, asyncio.Task[None]] = {}

    async def take_over(self, task_id: str, context: ServerCallContext) -> None:
        """Drive task `task_id` whenever its lease is free, until it needs no driver.

        `context`: the call of the subscriber that asked (its caller owns the task:
        the task and its answers are read and written with its client). Runs until
        cancelled or the task is terminal or waiting for input; store failures and
        concurrent writers are logged and tried again, never raised (a subscriber is
        waiting and goes on reading the events of whoever drives).
        """
        while True:
            try:
                if await self._drive_once(task_id, context):
                    return
            except (PacketbusError, ConcurrentTaskModificationError) as exc:
                _log.warning("task %s: taking over failed, trying again: %s", task_id, exc)
            except Exception:
                # A defect, not a state of the store: trying again would repeat it.
                _log.exception("task %s: taking over failed; left to another replica", task_id)
                return
            await asyncio.sleep(_RETRY_SECONDS)

    def nudge(self, task: Task, context: ServerCallContext) -> None:
        """Try once, in the background, to drive `task` (just read by GetTask for
        `context`'s caller): if nobody holds its lease, its replica is gone and
        this one goes on with it. A task that needs no driver, or one this
        replica already tries, is left alone."""
        if not _needs_driver(task) or task.id in self._nudged:
            return
        attempt = asyncio.create_task(self._nudge(task.id, context))
        self._nudged[task.id] = attempt
        attempt.add_done_callback(lambda _: self._nudged.pop(task.id, None))

    async def _nudge(self, task_id: str, context: ServerCallContext) -> None:
        try:
            await self._drive_once(task_id, context)
        except (PacketbusError, ConcurrentTaskModificationError) as exc:
            _log.warning("task %s: taking over failed: %s", task_id, exc)
        except Exception:
            _log.exception("task %s: taking over failed", task_id)

    async def aclose(self) -> None:
        """Stop the takeovers `nudge` started (their leases are released)."""
        attempts = list(self._nudged.values())
        for attempt in attempts:
            attempt.cancel()
        await asyncio.gather(*attempts, return_exceptions=True)

    async def _drive_once(self, task_id: str, context: ServerCallContext) -> bool:
        """One attempt; True when the task needs no driver (any more)."""
        lease = Lease(self._clients.default, self._agent_id, task_id, self._holder)
        if not await lease.acquire():
            return False
        try:
            manager = TaskManager(self._store, context, task_id, None, None)
            task = await manager.get_task()
            if not _needs_driver(task):
                return True
            assert task is not None
            # The last driver may have died between saving an event and publishing
            # it: the snapshot at that version stands in for it (stored only if
            # that version has no event yet).
            await self._stream.publish_unless_taken(
                task_id, VersionedEvent(task, manager.current_version)
            )
            parts = self._parts.with_client(self._clients.client(context))
            return await self._apply_answers(manager, task, lease, parts)
        finally:
            await lease.release()

    async def _apply_answers(
        self, manager: TaskManager, task: Task, lease: Lease, parts: PartCodec
    ) -> bool:
        start = answers_included(task)
        async for numbered in follow_answers(parts.client, task.id, start=start):
            if not lease.held:
                return False
            event = await answer_event(numbered, parts, task_id=task.id, context_id=task.context_id)
            try:
                await manager.save_task_event(event)
            except ConcurrentTaskModificationError:
                # Changed meanwhile (cancelled on another replica, or applied by
                # a driver that lost its lease): go on from what is stored.
                manager.invalidate()
                current = await manager.get_task()
                if not _needs_driver(current):
                    return True
                if answers_included(current) > numbered.index:
                    continue
                await manager.save_task_event(event)
            await self._stream.publish(task.id, VersionedEvent(event, manager.current_version))
            if ends_turn(numbered.answer):
                return True
        return False
