"""Client calls built on packets and consumer groups: task queues, inboxes, request/reply."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, cast

from packetbus.v1 import packet_pb2, packet_service_pb2, task_service_pb2

from .._inbox import INBOX_GROUP, Inbox, address_to, inbox_topic, reply_to
from .._pages import each
from .._tasks import TaskQueue
from .consumer_group_calls import ConsumerGroupCalls
from .packet_calls import PacketCalls
from .packet_defaults import fill_defaults
from .subscription import EARLIEST

if TYPE_CHECKING:
    from .client import Client


class TaskAndInboxCalls(PacketCalls, ConsumerGroupCalls):
    """Task queues; an agent's inbox; sending to an inbox and replying."""

    def task_queue(self, name: str) -> TaskQueue:
        """The task queue `name` (a topic name): post, claim, get, list, watch."""
        return TaskQueue(
            name,
            self._tasks,
            self._call,
            lambda packet: fill_defaults(packet, self._config.identity),
        )

    async def list_task_queues(
        self, prefix: str = "", *, page_size: int = 0, timeout: float | None = None
    ) -> AsyncIterator[task_service_pb2.TaskQueueSummary]:
        """The task queues (whose name starts with `prefix`, or all) in name order, each
        with its tasks counted by status and priority (TaskQueueSummary); only those
        the caller holds tasks.read on. Fetched `page_size` queues at a time (0: the
        server's default, 100; at most 1000); `timeout` is per page."""

        async def page(token: str) -> task_service_pb2.ListTaskQueuesResponse:
            request = task_service_pb2.ListTaskQueuesRequest(
                prefix=prefix, page_size=page_size, page_token=token
            )
            response: task_service_pb2.ListTaskQueuesResponse = await self._call(
                self._tasks.ListTaskQueues, request, timeout
            )
            return response

        async for summary in each(page, lambda response: response.queues):
            yield summary

    async def inbox(
        self,
        agent_id: str | None = None,
        *,
        max_outstanding_packets: int = 1000,
        timeout: float | None = None,
    ) -> Inbox:
        """Open `agent_id`'s inbox (default: this client's identity): an async iterator
        of leased deliveries, and `Inbox.request` for request/reply. Creates the inbox's
        consumer group on first use, from the inbox's first packet."""
        agent = agent_id or (self._config.identity.agent_id if self._config.identity else "")
        if not agent:
            raise ValueError("name the agent: inbox(agent_id), or connect with an identity")
        topic = inbox_topic(agent)
        await self.create_consumer_group(topic, INBOX_GROUP, start=EARLIEST, timeout=timeout)
        consumer = self.consume(
            topic, INBOX_GROUP, consumer=agent, max_outstanding_packets=max_outstanding_packets
        )
        # Inbox takes the whole Client, which this always is.
        return Inbox(cast("Client", self), agent, consumer)

    async def send_to(
        self, agent_id: str, packet: packet_pb2.Packet, *, timeout: float | None = None
    ) -> packet_service_pb2.Receipt:
        """Dispatch `packet` to `agent_id`'s inbox (its topic is set accordingly)."""
        return await self.dispatch(address_to(packet, agent_id), timeout=timeout)

    async def reply(
        self,
        request: packet_service_pb2.StoredPacket | packet_pb2.Packet,
        packet: packet_pb2.Packet,
        *,
        timeout: float | None = None,
    ) -> packet_service_pb2.Receipt:
        """Answer `request`: `packet` goes to the requester's inbox with in_reply_to set."""
        return await self.dispatch(reply_to(request, packet), timeout=timeout)
