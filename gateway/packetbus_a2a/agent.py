"""Serve A2A requests from a packetbus agent without knowing A2A.

::

    async with await A2AAgent.open(client, "summarizer") as agent:
        async for request in agent:
            await request.status("reading")
            await request.artifact("summary", summarize(request.text))
            await request.finish("done")

Each request is one leased delivery of the agent's inbox: `finish`, `fail`,
`refuse` and `ask` (a question back: the client's next message to the task is
a new request) answer it and ack it; a request left unanswered (the process
died) comes back after the inbox's ack deadline. CANCEL packets for a task are
acked and recorded (`A2AAgent.cancelled`). Packets that are not A2A (another
protocol) are nacked with a reason, never dropped: redelivered, and after the
inbox group's max attempts moved to the carcel. Use the inbox for A2A only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType

from packetbus import Client, SpeechAct
from packetbus._consumer import Delivery
from packetbus._inbox import Inbox
from packetbus.v1 import packet_service_pb2

from .wire import PROTOCOL, AnswerKind, answer_packet


class A2ARequest:
    """One A2A message to the agent: its text, task id (`task_id`, the packet's
    reply_with) and context id (`context_id`, its conversation id), and the
    calls that answer it."""

    def __init__(self, client: Client, agent_id: str, delivery: Delivery) -> None:
        self._client = client
        self._agent_id = agent_id
        self._delivery = delivery
        self.packet: packet_service_pb2.StoredPacket = delivery.packet
        fields = self.packet.packet.data.fields
        self.text: str = fields["text"].string_value if "text" in fields else ""
        self.task_id: str = self.packet.packet.reply_with
        self.context_id: str = self.packet.packet.conversation_id
        self.done = False

    async def status(self, text: str) -> None:
        """Tell the A2A client what is going on (task state WORKING, with `text`)."""
        await self._answer("status", text)

    async def artifact(self, name: str, text: str) -> None:
        """Hand the A2A client an artifact called `name` holding `text`."""
        await self._answer("artifact", text, name=name)

    async def ask(self, text: str) -> None:
        """Ask the A2A client for more input (INPUT_REQUIRED, with question `text`);
        acks the request. The client's reply to the task arrives as a new
        `A2ARequest` with the same `task_id`."""
        await self._answer("input", text, ends=True)

    async def finish(self, text: str) -> None:
        """Complete the task (COMPLETED) with a final message `text`; acks the request."""
        await self._answer("final", text, ends=True)

    async def fail(self, text: str) -> None:
        """End the task as FAILED, saying why; acks the request."""
        await self._answer("final", text, ends=True, speech_act=SpeechAct.SPEECH_ACT_FAILURE)

    async def refuse(self, text: str) -> None:
        """End the task as REJECTED, saying why; acks the request."""
        await self._answer("final", text, ends=True, speech_act=SpeechAct.SPEECH_ACT_REFUSE)

    async def _answer(
        self,
        kind: AnswerKind,
        text: str,
        *,
        name: str = "",
        ends: bool = False,
        speech_act: int = SpeechAct.SPEECH_ACT_INFORM,
    ) -> None:
        if self.done:
            raise RuntimeError(f"task {self.task_id} is already answered")
        packet = answer_packet(kind, text, name=name, speech_act=speech_act)
        packet.origin = self._agent_id
        await self._client.reply(self.packet, packet)  # returns once stored
        if ends:
            self.done = True
            await self._delivery.ack()


class A2AAgent:
    """An agent's inbox, read as A2A requests (see the module docstring)."""

    def __init__(self, client: Client, agent_id: str, inbox: Inbox) -> None:
        self._client = client
        self.agent_id = agent_id
        self._inbox = inbox
        self.cancelled: set[str] = set()  # task ids a CANCEL packet named

    @classmethod
    async def open(cls, client: Client, agent_id: str) -> A2AAgent:
        """Open `agent_id`'s inbox (creating its consumer group on first use)."""
        return cls(client, agent_id, await client.inbox(agent_id))

    def __aiter__(self) -> AsyncIterator[A2ARequest]:
        return self._requests()

    async def _requests(self) -> AsyncIterator[A2ARequest]:
        async for delivery in self._inbox:
            packet = delivery.packet.packet
            if packet.protocol != PROTOCOL:
                await delivery.nack(reason="not an A2A request")
            elif packet.speech_act == SpeechAct.SPEECH_ACT_CANCEL:
                self.cancelled.add(packet.reply_with)
                await delivery.ack()
            elif packet.speech_act == SpeechAct.SPEECH_ACT_REQUEST:
                yield A2ARequest(self._client, self.agent_id, delivery)
            else:
                await delivery.nack(reason="an A2A packet that is not a request or cancel")

    async def close(self) -> None:
        await self._inbox.close()

    async def __aenter__(self) -> A2AAgent:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
