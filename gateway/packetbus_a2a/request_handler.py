"""One agent's a2a-sdk request handler, wired to packetbus (store, stream, executor).

`build_handler` assembles a2a-sdk's `DefaultRequestHandler` for one agent from
the gateway's pieces: `InboxExecutor` (messages to the agent's inbox),
`ContextTaskStore` (tasks in the shared context, compare-and-set) and
`TopicEventStream` (each task's events on a topic, with `TaskDriver` taking a
task over when its replica is gone). Any replica can then answer every call
for any task.

`GatewayRequestHandler` adds one thing to a2a-sdk's handler: a cancel that
another replica records (the task runs elsewhere, or nowhere) still reaches
the agent as a CANCEL packet; a2a-sdk calls the executor's `cancel` only on
the replica running the task. The packet's tracking id is fixed per task, so
both paths store it once.
"""

from __future__ import annotations

from a2a.server.context import ServerCallContext
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.types.a2a_pb2 import AgentCard, CancelTaskRequest, Task, TaskState

from packetbus import Client

from .driver import TaskDriver
from .event_stream import TopicEventStream
from .executor import InboxExecutor
from .task_store import ContextTaskStore
from .wire import cancel_packet


class GatewayRequestHandler(DefaultRequestHandler):
    """a2a-sdk's `DefaultRequestHandler` for agent `agent_id` (see the module docstring)."""

    def __init__(
        self,
        *,
        client: Client,
        agent_id: str,
        agent_card: AgentCard,
        executor: InboxExecutor,
        store: ContextTaskStore,
        stream: TopicEventStream,
    ) -> None:
        super().__init__(
            agent_executor=executor,
            task_store=store,
            agent_card=agent_card,
            event_stream=stream,
        )
        self._client = client
        self._agent_id = agent_id

    async def on_cancel_task(
        self, params: CancelTaskRequest, context: ServerCallContext
    ) -> Task | None:
        """a2a-sdk's cancel, then the CANCEL packet to the agent (see the module docstring)."""
        task: Task | None = await super().on_cancel_task(params, context)
        if task is not None and task.status.state == TaskState.TASK_STATE_CANCELED:
            await self._client.send_to(
                self._agent_id, cancel_packet(task_id=task.id, context_id=task.context_id)
            )
        return task


def build_handler(
    client: Client,
    agent_id: str,
    card: AgentCard,
    *,
    holder: str,
    answer_timeout: float,
) -> GatewayRequestHandler:
    """The request handler for agent `agent_id`, described by `card`; `holder` is
    this replica's id in driver leases, `answer_timeout` (seconds) how long a turn
    waits for the agent (see `InboxExecutor`)."""
    store = ContextTaskStore(client, agent_id)
    driver: TaskDriver | None = None

    async def take_over(task_id: str) -> None:
        assert driver is not None
        await driver.take_over(task_id)

    stream = TopicEventStream(client, agent_id, drive=take_over)
    driver = TaskDriver(client, agent_id, holder, store, stream)
    return GatewayRequestHandler(
        client=client,
        agent_id=agent_id,
        agent_card=card,
        executor=InboxExecutor(client, agent_id, holder=holder, answer_timeout=answer_timeout),
        store=store,
        stream=stream,
    )
