"""One agent's a2a-sdk request handler, wired to packetbus (store, stream, executor).

`build_handler` assembles a2a-sdk's `DefaultRequestHandler` for one agent from
the gateway's pieces: `InboxExecutor` (messages to the agent's inbox),
`ContextTaskStore` (tasks in the shared context, compare-and-set) and
`TopicEventStream` (each task's events on a topic, with `TaskDriver` taking a
task over when its replica is gone). Any replica can then answer every call
for any task.

`GatewayRequestHandler` adds three things to a2a-sdk's handler: GetTask of a
task nobody follows (its replica died) has this replica take it over
(`TaskDriver.nudge`); a cancel that
another replica records (the task runs elsewhere, or nowhere) still reaches
the agent as a CANCEL packet (a2a-sdk calls the executor's `cancel` only on
the replica running the task; the packet's tracking id is fixed per task, so
both paths store it once); and a SubscribeToTask makes its caller known to the
event stream (`event_stream.subscriber`), so a takeover (`driver`) reads and
writes that caller's task under that caller's credential.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from a2a.server.context import ServerCallContext
from a2a.server.events.event_queue import Event
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.types.a2a_pb2 import (
    AgentCard,
    CancelTaskRequest,
    GetTaskRequest,
    SubscribeToTaskRequest,
    Task,
    TaskState,
)

from .auth import NotingExecutor, Principals
from .driver import TaskDriver
from .event_stream import TopicEventStream, subscriber
from .executor import InboxExecutor
from .task_store import ContextTaskStore
from .wire import cancel_packet


class GatewayRequestHandler(DefaultRequestHandler):
    """a2a-sdk's `DefaultRequestHandler` for agent `agent_id` (see the module docstring)."""

    def __init__(
        self,
        *,
        clients: Principals,
        agent_id: str,
        agent_card: AgentCard,
        executor: NotingExecutor,
        store: ContextTaskStore,
        stream: TopicEventStream,
        driver: TaskDriver,
    ) -> None:
        super().__init__(
            agent_executor=executor,
            task_store=store,
            agent_card=agent_card,
            event_stream=stream,
        )
        self._clients = clients
        self._agent_id = agent_id
        self._driver = driver

    async def on_get_task(self, params: GetTaskRequest, context: ServerCallContext) -> Task | None:
        """a2a-sdk's GetTask; a task that may have lost its replica is taken over
        in the background if nobody follows it (`TaskDriver.nudge`)."""
        task: Task | None = await super().on_get_task(params, context)
        if task is not None:
            self._driver.nudge(task, context)
        return task

    async def aclose(self) -> None:
        """a2a-sdk's drain, and the takeovers this replica runs stop (their leases
        are given up, so another replica can go on at once)."""
        await super().aclose()
        await self._driver.aclose()

    async def on_subscribe_to_task(
        self, params: SubscribeToTaskRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event, None]:
        """a2a-sdk's SubscribeToTask, its caller known to the event stream."""
        # Not reset: the generator may be closed from another context, and the
        # value ends with the request's own task (each call has its own).
        subscriber.set(context)
        async for event in super().on_subscribe_to_task(params, context):
            yield event

    async def on_cancel_task(
        self, params: CancelTaskRequest, context: ServerCallContext
    ) -> Task | None:
        """a2a-sdk's cancel, then the CANCEL packet to the agent (see the module docstring)."""
        task: Task | None = await super().on_cancel_task(params, context)
        if task is not None and task.status.state == TaskState.TASK_STATE_CANCELED:
            await self._clients.client(context).send_to(
                self._agent_id, cancel_packet(task_id=task.id, context_id=task.context_id)
            )
        return task


def build_handler(
    clients: Principals,
    agent_id: str,
    card: AgentCard,
    *,
    holder: str,
    answer_timeout: float,
) -> GatewayRequestHandler:
    """The request handler for agent `agent_id`, described by `card`; `clients`
    gives each caller's packetbus client (the gateway's own, `clients.default`,
    keeps the event topics and leases); `holder` is this replica's id in driver
    leases, `answer_timeout` (seconds) how long a turn waits for the agent (see
    `InboxExecutor`)."""
    store = ContextTaskStore(clients, agent_id)
    driver: TaskDriver | None = None

    async def take_over(task_id: str, context: ServerCallContext) -> None:
        assert driver is not None
        await driver.take_over(task_id, context)

    stream = TopicEventStream(clients.default, agent_id, drive=take_over)
    driver = TaskDriver(clients, agent_id, holder, store, stream)
    executor = InboxExecutor(
        clients, agent_id, holder=holder, store=store, answer_timeout=answer_timeout
    )
    return GatewayRequestHandler(
        clients=clients,
        agent_id=agent_id,
        agent_card=card,
        executor=NotingExecutor(executor),
        store=store,
        stream=stream,
        driver=driver,
    )
