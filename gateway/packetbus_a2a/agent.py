"""Serve A2A requests from a packetbus agent without knowing A2A.

::

    async with await A2AAgent.open(client, "summarizer") as agent:
        async for request in agent:
            await request.status("reading")
            await request.artifact("summary", summarize(request.text))
            await request.finish("done")

`request.parts` holds every part of the A2A message (a2a `Part`: text, raw bytes,
url or data, with media type, filename and metadata), parts that travelled as
context documents read back; `request.text` its text parts joined by newlines.
Answers take any parts (`parts.as_part`: a str is text, bytes raw, a mapping
data, or an a2a `Part`); parts too large for a packet go as context documents
(see `parts`), and one the context store refuses raises `parts.PartRefused`
with nothing sent.

Each request is one leased delivery of the agent's inbox: `finish`, `fail`,
`refuse` and `ask` (a question back: the client's next message to the task is
a new request) answer it and ack it; a request left unanswered (the process
died) comes back after the inbox's ack deadline. CANCEL packets for a task are
acked and recorded (`A2AAgent.cancelled`). Packets that are not A2A (another
protocol) are nacked with a reason, never dropped: redelivered, and after the
inbox group's max attempts moved to the carcel. Use the inbox for A2A only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from types import TracebackType

from a2a.types.a2a_pb2 import Part
from google.protobuf import json_format

from packetbus import Client, Packet, PacketbusError, SpeechAct
from packetbus._consumer import Delivery
from packetbus._inbox import Inbox
from packetbus.v1 import packet_service_pb2

from .parts import Entry, PartCodec, PartLike, as_part, parts_text
from .wire import PROTOCOL, AnswerKind, answer_packet, request_entries, tracking_id


class A2ARequest:
    """One A2A message to the agent: its parts (`parts`, a list of a2a `Part`) and
    text (`text`), task id (`task_id`, the packet's reply_with) and context id
    (`context_id`, its conversation id), and the calls that answer it."""

    def __init__(
        self,
        client: Client,
        agent_id: str,
        delivery: Delivery,
        parts: Sequence[Part],
        codec: PartCodec,
    ) -> None:
        self._client = client
        self._agent_id = agent_id
        self._delivery = delivery
        self._codec = codec
        self.packet: packet_service_pb2.StoredPacket = delivery.packet
        self.parts: list[Part] = list(parts)
        self.text: str = parts_text(self.parts)
        self.task_id: str = self.packet.packet.reply_with
        self.context_id: str = self.packet.packet.conversation_id
        self.done = False
        self._answers = 0  # answers sent: names their documents, the same on a retry

    async def status(self, *parts: PartLike) -> None:
        """Tell the A2A client what is going on (task state WORKING, with `parts`)."""
        await self._answer("status", parts)

    async def artifact(self, name: str, *parts: PartLike) -> None:
        """Hand the A2A client an artifact called `name` holding `parts`."""
        await self._answer("artifact", parts, name=name)

    async def ask(self, *parts: PartLike) -> None:
        """Ask the A2A client for more input (INPUT_REQUIRED, with the question in
        `parts`); acks the request. The client's reply to the task arrives as a new
        `A2ARequest` with the same `task_id`."""
        await self._answer("input", parts, ends=True)

    async def finish(self, *parts: PartLike) -> None:
        """Complete the task (COMPLETED) with a final message of `parts`; acks the request."""
        await self._answer("final", parts, ends=True)

    async def fail(self, *parts: PartLike) -> None:
        """End the task as FAILED, saying why; acks the request."""
        await self._answer("final", parts, ends=True, speech_act=SpeechAct.SPEECH_ACT_FAILURE)

    async def refuse(self, *parts: PartLike) -> None:
        """End the task as REJECTED, saying why; acks the request."""
        await self._answer("final", parts, ends=True, speech_act=SpeechAct.SPEECH_ACT_REFUSE)

    async def _answer(
        self,
        kind: AnswerKind,
        given: tuple[PartLike, ...],
        *,
        name: str = "",
        ends: bool = False,
        speech_act: int = SpeechAct.SPEECH_ACT_INFORM,
    ) -> None:
        if self.done:
            raise RuntimeError(f"task {self.task_id} is already answered")
        self._answers += 1
        what = tracking_id(self.task_id, f"answer {self._answers}")

        def build(entries: list[Entry]) -> Packet:
            packet = answer_packet(kind, entries, name=name, speech_act=speech_act)
            packet.origin = self._agent_id
            return packet

        parts = [as_part(p) for p in given]
        packet = await self._codec.pack(
            parts, build, task_id=self.task_id, what=what, author=self._agent_id
        )
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
        self._codec = PartCodec(client)
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
                try:
                    parts = await self._codec.unpack(request_entries(packet))
                except (PacketbusError, json_format.ParseError) as exc:
                    # A document that expired or is damaged: redelivered, then carceled.
                    await delivery.nack(reason=f"the request's parts cannot be read: {exc}")
                    continue
                yield A2ARequest(self._client, self.agent_id, delivery, parts, self._codec)
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
