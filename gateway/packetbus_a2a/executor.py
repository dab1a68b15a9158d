"""The a2a-sdk AgentExecutor that forwards A2A messages to a packetbus agent's inbox.

`execute` sends the REQUEST packet (see `wire`), takes the task's driver lease
(`lease`) and follows the task's answers (`answers`) from the first one the
task does not include yet, handing each to a2a-sdk as its event, until one
ends the agent's turn (a final answer, or a question: INPUT_REQUIRED, after
which the user's next message to the task is another `execute`). If this
replica dies, another one takes the task over (`driver`). `cancel` sends a
CANCEL packet to the agent and marks the task CANCELED.
"""

from __future__ import annotations

import asyncio

from a2a.helpers import new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.tasks import TaskUpdater
from a2a.types.a2a_pb2 import Task, TaskState, TaskStatus
from a2a.utils.errors import InvalidParamsError

from packetbus import Client

from .answers import answer_event, answers_included, ends_turn, follow_answers
from .auth import Principals
from .lease import Lease
from .parts import PartCodec, PartRefused, message_packet
from .task_store import ContextTaskStore
from .wire import cancel_packet


class InboxExecutor(AgentExecutor):
    """Forwards each A2A message for agent `agent_id` as a packet to its inbox.

    `clients`: the packetbus client of each request's caller (`auth.Principals`):
    the request, its parts and the answers move under the caller's credential;
    the driver lease (`lease`) under the gateway's own (`Principals.default`).
    `holder`: this replica's id in driver leases; `store`: the agent's tasks. `answer_timeout` (seconds):
    how long a turn may wait for the agent's answer that ends it before the
    task is marked FAILED (the request stays in the inbox: an agent that comes
    back later still gets it, but the A2A task has ended).
    """

    def __init__(
        self,
        clients: Client | Principals,
        agent_id: str,
        *,
        holder: str,
        store: ContextTaskStore,
        answer_timeout: float = 300.0,
    ) -> None:
        self._clients = clients if isinstance(clients, Principals) else Principals(clients)
        self._agent_id = agent_id
        self._holder = holder
        self._store = store
        self._answer_timeout = answer_timeout
        self._parts = PartCodec(self._clients.default)

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        message = context.message
        task_id, context_id = context.task_id, context.context_id
        if message is None or not task_id or not context_id:
            raise ValueError("a request without a message, task id or context id")
        client = self._clients.client(context.call_context)
        parts = self._parts.with_client(client)
        # Built (large parts put in documents) before the task is stored: a part that
        # cannot travel is the caller's INVALID_PARAMS, with no task and no packet.
        try:
            packet = await message_packet(parts, message, task_id=task_id, context_id=context_id)
        except PartRefused as exc:
            raise InvalidParamsError(message=str(exc)) from None
        # Sent before the task is first stored: a caller the packetbus server
        # refuses to send for leaves no task behind.
        await client.send_to(self._agent_id, packet)
        lease = Lease(self._clients.default, self._agent_id, task_id, self._holder)
        try:
            async with asyncio.timeout(self._answer_timeout):
                start = answers_included(context.current_task)
                # The lease before the task is stored: from then on no other replica
                # takes a new task over (`driver`) while this one follows it.
                if not await lease.acquire():
                    # The task's previous turn is still followed elsewhere: wait for
                    # it, then go on from the answers the task holds by then.
                    if not await lease.acquire_within(self._answer_timeout):
                        raise TimeoutError
                    stored = await self._store.get(task_id, context.call_context)
                    start = answers_included(None if stored is None else stored.task)
                if context.current_task is None:
                    await event_queue.enqueue_event(
                        Task(
                            id=task_id,
                            context_id=context_id,
                            status=TaskStatus(state=TaskState.TASK_STATE_SUBMITTED),
                            history=[message],
                        )
                    )
                await self._follow(parts, task_id, context_id, start, lease, event_queue)
        except TimeoutError:
            updater = TaskUpdater(event_queue, task_id, context_id)
            await updater.failed(
                updater.new_agent_message(
                    [
                        new_text_part(
                            f"no answer from agent {self._agent_id!r} "
                            f"within {self._answer_timeout:g}s"
                        )
                    ]
                )
            )
        finally:
            await lease.release()

    async def _follow(
        self,
        parts: PartCodec,
        task_id: str,
        context_id: str,
        start: int,
        lease: Lease,
        event_queue: EventQueue,
    ) -> None:
        async for numbered in follow_answers(parts.client, task_id, start=start):
            if not lease.held:
                return  # another replica follows the task now (see `driver`)
            event = await answer_event(numbered, parts, task_id=task_id, context_id=context_id)
            await event_queue.enqueue_event(event)
            if ends_turn(numbered.answer):
                return

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        task_id, context_id = context.task_id, context.context_id
        if not task_id or not context_id:
            raise ValueError("a cancel without a task id or context id")
        await self._clients.client(context.call_context).send_to(
            self._agent_id, cancel_packet(task_id=task_id, context_id=context_id)
        )
        await TaskUpdater(event_queue, task_id, context_id).cancel()
