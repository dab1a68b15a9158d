"""Agent inboxes and request/reply, built on topics and consumer groups.

An agent's inbox is the topic ``inbox/<agent id>`` (characters a topic name
cannot hold are written ``:<hex>``) with one consumer group, ``inbox``, that
starts at the inbox's first packet: a packet sent before the agent ever read
its inbox is still delivered. Deliveries are leased, acked and redelivered as
in any consumer group. Any client, in any language, reaches an inbox by
dispatching to that topic.

Request/reply follows FIPA: a request carries ``reply_with``; the answer
carries ``in_reply_to`` with the same value and goes to the requester's inbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from packetbus.v1 import packet_pb2, packet_service_pb2, speech_act_pb2

from ._consumer import Consumer, Delivery
from ._errors import PacketbusError, client_closed
from ._stopping import ClosedOnExit

if TYPE_CHECKING:
    from ._client import Client

INBOX_GROUP = "inbox"
_INBOX_PREFIX = "inbox/"
_TOPIC_SAFE = re.compile(r"[A-Za-z0-9_.-]", re.ASCII)
# The server's agent id rule (1-255 bytes of UTF-8); an id that passes it always
# has an inbox: the server takes inbox topics up to 6 + 3 x 255 characters long.
MAX_AGENT_ID_BYTES = 255


def inbox_topic(agent_id: str) -> str:
    """The topic holding `agent_id`'s inbox.

    Raises ValueError for an id no agent can have (empty, or over 255 bytes of UTF-8).
    """
    if not agent_id:
        raise ValueError("an inbox needs an agent id")
    size = len(agent_id.encode())
    if size > MAX_AGENT_ID_BYTES:
        raise ValueError(
            f"agent id {agent_id[:40]!r}... is too long: {size} bytes (UTF-8); "
            f"agent ids are 1..{MAX_AGENT_ID_BYTES}"
        )
    encoded = "".join(
        c if _TOPIC_SAFE.fullmatch(c) else "".join(f":{b:02x}" for b in c.encode())
        for c in agent_id
    )
    return _INBOX_PREFIX + encoded


def address_to(packet: packet_pb2.Packet, agent_id: str) -> packet_pb2.Packet:
    """Send `packet` to `agent_id`'s inbox (sets its topic), in place."""
    packet.topic = inbox_topic(agent_id)
    return packet


def reply_to(
    request: packet_service_pb2.StoredPacket | packet_pb2.Packet, reply: packet_pb2.Packet
) -> packet_pb2.Packet:
    """Make `reply` the answer to `request`, in place: to the requester's inbox, in its
    conversation, with ``in_reply_to`` = the request's ``reply_with``."""
    asked = request.packet if isinstance(request, packet_service_pb2.StoredPacket) else request
    if not asked.reply_with:
        raise ValueError("the request has no reply_with: it does not expect a reply")
    address_to(reply, asked.origin)
    reply.in_reply_to = asked.reply_with
    if asked.conversation_id and not reply.conversation_id:
        reply.conversation_id = asked.conversation_id
    if asked.protocol and not reply.protocol:
        reply.protocol = asked.protocol
    if not reply.speech_act:
        reply.speech_act = speech_act_pb2.SPEECH_ACT_INFORM
    return reply


class Inbox(ClosedOnExit):
    """An agent's inbox: an async iterator of Delivery, plus `request`.

    Use it as ``async with await client.inbox("agent-7") as inbox:``. Replies to
    this agent's requests go to the `request` call waiting for them (and are
    acked); every other delivery is handed to the iterator, to ack as usual.
    """

    def __init__(self, client: Client, agent_id: str, consumer: Consumer) -> None:
        self._client = client
        self.agent_id = agent_id
        self._consumer = consumer
        self._waiting: dict[str, asyncio.Future[Delivery]] = {}
        self._others: asyncio.Queue[Delivery | BaseException] = asyncio.Queue()
        self._router: asyncio.Task[None] | None = None
        self._closed = False
        self._ended: PacketbusError | None = None  # why the stream ended, once it has

    @property
    def topic(self) -> str:
        return self._consumer.topic

    def _start(self) -> None:
        if self._closed:
            raise client_closed("the inbox")
        if self._router is None:
            self._router = asyncio.create_task(
                self._route(), name=f"packetbus-inbox-{self.agent_id}"
            )

    async def _route(self) -> None:
        ended: BaseException = StopAsyncIteration()
        try:
            async for batch in self._consumer.batches():
                for delivery in batch:
                    key = delivery.packet.packet.in_reply_to
                    waiter = self._waiting.pop(key, None) if key else None
                    if waiter is not None and not waiter.done():
                        delivery.ack()
                        waiter.set_result(delivery)
                    else:
                        self._others.put_nowait(delivery)
        except PacketbusError as exc:
            ended = exc
        finally:
            # However the stream ended, nothing waits for it any longer.
            self._others.put_nowait(ended)
            self._ended = ended if isinstance(ended, PacketbusError) else client_closed("the inbox")
            self._fail_waiting(self._ended)

    def _fail_waiting(self, error: PacketbusError) -> None:
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(error)

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self

    async def __anext__(self) -> Delivery:
        if self._closed:
            raise StopAsyncIteration
        self._start()
        item = await self._others.get()
        if isinstance(item, BaseException):
            self._others.put_nowait(item)
            raise item
        return item

    async def request(
        self, to: str, packet: packet_pb2.Packet, *, timeout: float | None = None
    ) -> Delivery:
        """Send `packet` to agent `to` as a request and wait for the reply in this inbox.

        Sets what is unset: origin (this agent), speech act (REQUEST), tracking id
        (a new UUID), reply_with (the tracking id), conversation_id (the same).
        Returns the reply's delivery (already acked); DEADLINE_EXCEEDED if no reply arrives within `timeout`
        (default: the client's default timeout).
        Raises PacketbusError CANCELLED at once when the inbox is closed, or
        closes while waiting.
        """
        self._start()
        if self._ended is not None:  # the stream ended: no reply could arrive
            raise self._ended
        if not packet.origin:
            packet.origin = self.agent_id
        if not packet.speech_act:
            packet.speech_act = speech_act_pb2.SPEECH_ACT_REQUEST
        if not packet.tracking_id:
            packet.tracking_id = str(uuid.uuid4())
        if not packet.reply_with:
            # Its tracking id, not a new UUID: a request rebuilt with the same
            # tracking id (after a crash) is the same packet, and answers as before.
            packet.reply_with = packet.tracking_id
        if not packet.conversation_id:
            packet.conversation_id = packet.reply_with
        address_to(packet, to)
        waiter: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        self._waiting[packet.reply_with] = waiter
        limit = self._client.config.default_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                await self._client.dispatch(packet, timeout=limit)
                return await waiter
        except TimeoutError:
            raise PacketbusError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no reply to {packet.reply_with} from {to!r} within {limit}s",
            ) from None
        finally:
            self._waiting.pop(packet.reply_with, None)
            if waiter.done() and not waiter.cancelled():
                waiter.exception()  # failed while dispatch raised: retrieved, not logged

    async def close(self) -> None:
        """Stop routing, give back deliveries not handed out, close the consumer;
        `request` calls still waiting raise CANCELLED, iteration ends."""
        if self._closed:
            return
        self._closed = True
        self._fail_waiting(client_closed("the inbox"))
        if self._router is not None:
            self._router.cancel()
            with contextlib.suppress(BaseException):
                await self._router
        # Deliveries routed but never handed out go back, their attempt uncounted.
        unseen = []
        while not self._others.empty():
            item = self._others.get_nowait()
            if isinstance(item, Delivery):
                unseen.append(item)
        if unseen:
            self._consumer.release(*unseen)
        await self._consumer.close()
