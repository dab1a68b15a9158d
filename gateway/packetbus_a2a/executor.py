"""The a2a-sdk AgentExecutor that forwards A2A messages to a packetbus agent's inbox.

`execute` sends the REQUEST packet (see `wire`) and follows the task's reply
inbox (the topic of `wire.reply_address(task id)`, read as a fan-out
subscription from its first packet, so any replica reading it again sees the
same answers in the same order), turning each answer into an A2A event until
the final one. `cancel` sends a CANCEL packet to the agent and marks the task
CANCELED.
"""

from __future__ import annotations

import asyncio

from a2a.helpers import get_message_text, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.tasks import TaskUpdater
from a2a.types.a2a_pb2 import Message, Task, TaskState, TaskStatus
from google.protobuf import json_format

from packetbus import EARLIEST, Client, SpeechAct
from packetbus._inbox import inbox_topic

from .auth import Principals
from .wire import Answer, cancel_packet, read_answer, reply_address, request_packet


class InboxExecutor(AgentExecutor):
    """Forwards each A2A message for agent `agent_id` as a packet to its inbox.

    `answer_timeout` (seconds): how long a task may wait for the agent's final
    answer before it is marked FAILED (the request stays in the inbox: an
    agent that comes back later still gets it, but the A2A task has ended).
    """

    def __init__(
        self, clients: Client | Principals, agent_id: str, *, answer_timeout: float = 300.0
    ) -> None:
        # The packetbus client of each request's caller (see auth.Principals).
        self._clients = clients if isinstance(clients, Principals) else Principals(clients)
        self._agent_id = agent_id
        self._answer_timeout = answer_timeout

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        message = context.message
        task_id, context_id = context.task_id, context.context_id
        if message is None or not task_id or not context_id:
            raise ValueError("a request without a message, task id or context id")
        client = self._clients.client(context.call_context)
        updater = TaskUpdater(event_queue, task_id, context_id)
        packet = request_packet(
            task_id=task_id,
            context_id=context_id,
            message_id=message.message_id,
            text=get_message_text(message),
            message_json=json_format.MessageToJson(message, indent=None),
        )
        # Sent before the task is first stored: a caller the packetbus server
        # refuses to send for leaves no task behind.
        await client.send_to(self._agent_id, packet)
        if context.current_task is None:
            await event_queue.enqueue_event(
                Task(
                    id=task_id,
                    context_id=context_id,
                    status=TaskStatus(state=TaskState.TASK_STATE_SUBMITTED),
                    history=[message],
                )
            )
        try:
            async with asyncio.timeout(self._answer_timeout):
                await self._follow(client, task_id, updater)
        except TimeoutError:
            await updater.failed(
                self._agent_message(
                    updater,
                    f"no answer from agent {self._agent_id!r} within {self._answer_timeout:g}s",
                )
            )

    async def _follow(self, client: Client, task_id: str, updater: TaskUpdater) -> None:
        topic = inbox_topic(reply_address(task_id))
        async with client.subscribe(topic, start=EARLIEST) as answers:
            async for stored in answers:
                if stored.packet.in_reply_to != task_id:
                    continue
                answer = read_answer(stored.packet)
                if answer is not None and await self._apply(answer, updater):
                    return

    async def _apply(self, answer: Answer, updater: TaskUpdater) -> bool:
        """Publish `answer` as an A2A event; True when it ends the task."""
        if answer.kind == "artifact":
            await updater.add_artifact([new_text_part(answer.text)], name=answer.name or None)
            return False
        message = self._agent_message(updater, answer.text)
        if answer.kind == "status":
            await updater.start_work(message)
            return False
        if answer.speech_act == SpeechAct.SPEECH_ACT_FAILURE:
            await updater.failed(message)
        elif answer.speech_act == SpeechAct.SPEECH_ACT_REFUSE:
            await updater.reject(message)
        else:
            await updater.complete(message)
        return True

    @staticmethod
    def _agent_message(updater: TaskUpdater, text: str) -> Message:
        return updater.new_agent_message([new_text_part(text)])

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        task_id, context_id = context.task_id, context.context_id
        if not task_id or not context_id:
            raise ValueError("a cancel without a task id or context id")
        await self._clients.client(context.call_context).send_to(
            self._agent_id, cancel_packet(task_id=task_id, context_id=context_id)
        )
        await TaskUpdater(event_queue, task_id, context_id).cancel()
