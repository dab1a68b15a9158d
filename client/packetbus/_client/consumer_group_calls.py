"""Client calls on consumer groups: manage them, consume, and settle deliveries by id."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from packetbus.v1 import consumer_group_service_pb2

from .._consumer import Consumer
from .._retrying import Backoff
from .core import ClientCore
from .subscription import LATEST, StartPosition


class ConsumerGroupCalls(ClientCore):
    """Create, get, list and delete consumer groups; consume; ack, nack, extend leases."""

    async def create_consumer_group(
        self,
        topic: str,
        name: str,
        *,
        start: StartPosition = LATEST,
        after: str | None = None,
        ack_deadline_seconds: int = 0,
        max_delivery_attempts: int = 0,
        timeout: float | None = None,
    ) -> consumer_group_service_pb2.ConsumerGroup:
        """Create a consumer group on `topic` (or return it, if it exists with these
        settings; other settings are ALREADY_EXISTS). It starts at `start` (EARLIEST
        or LATEST) or right after cursor `after`; 0 means the server's default
        ack deadline (30 s) and max delivery attempts (5)."""
        request = consumer_group_service_pb2.CreateConsumerGroupRequest(
            topic=topic,
            name=name,
            ack_deadline_seconds=ack_deadline_seconds,
            max_delivery_attempts=max_delivery_attempts,
        )
        if after is not None:
            request.after_cursor = after
        else:
            request.start_position = start
        response = await self._call(self._groups.CreateConsumerGroup, request, timeout)
        return cast(consumer_group_service_pb2.ConsumerGroup, response.group)

    async def get_consumer_group(
        self, topic: str, name: str, *, timeout: float | None = None
    ) -> consumer_group_service_pb2.ConsumerGroup:
        request = consumer_group_service_pb2.GetConsumerGroupRequest(topic=topic, name=name)
        response = await self._call(self._groups.GetConsumerGroup, request, timeout)
        return cast(consumer_group_service_pb2.ConsumerGroup, response.group)

    async def list_consumer_groups(
        self, topic: str, *, timeout: float | None = None
    ) -> list[consumer_group_service_pb2.ConsumerGroup]:
        request = consumer_group_service_pb2.ListConsumerGroupsRequest(topic=topic)
        response = await self._call(self._groups.ListConsumerGroups, request, timeout)
        return list(response.groups)

    async def delete_consumer_group(
        self, topic: str, name: str, *, timeout: float | None = None
    ) -> bool:
        """Delete a group and its outstanding deliveries; False when there was none."""
        request = consumer_group_service_pb2.DeleteConsumerGroupRequest(topic=topic, name=name)
        response = await self._call(self._groups.DeleteConsumerGroup, request, timeout)
        return bool(response.deleted)

    def consume(
        self,
        topic: str,
        group: str,
        *,
        consumer: str,
        max_outstanding_packets: int = 1000,
        max_outstanding_bytes: int = 64 * 1024 * 1024,
        max_batch_packets: int = 0,
    ) -> Consumer:
        """Consume `topic` as `consumer` in consumer group `group` (create it first):
        an async iterator of leased Delivery objects to ack, nack or extend.

        The server stops delivering while this consumer holds
        `max_outstanding_packets` unsettled deliveries or `max_outstanding_bytes`
        of them. Use it with ``async with``: closing sends the settlements made
        so far.
        """
        subscription = consumer_group_service_pb2.PullSubscription(
            topic=topic,
            group=group,
            consumer=consumer,
            max_outstanding_packets=max_outstanding_packets,
            max_outstanding_bytes=max_outstanding_bytes,
            max_batch_packets=max_batch_packets,
        )
        retry = self._config.retry
        return Consumer(
            self._groups,
            subscription,
            retry=retry,
            backoff=lambda: Backoff(retry).next_delay,
        )

    async def acknowledge(
        self, topic: str, group: str, delivery_ids: Sequence[str], *, timeout: float | None = None
    ) -> list[consumer_group_service_pb2.SettleResult]:
        """Ack deliveries by id, from anywhere (no Pull stream needed); one result each."""
        request = consumer_group_service_pb2.AcknowledgeRequest(
            topic=topic, group=group, delivery_ids=delivery_ids
        )
        response = await self._call(self._groups.Acknowledge, request, timeout)
        return list(response.results)

    async def nack(
        self,
        topic: str,
        group: str,
        delivery_ids: Sequence[str],
        *,
        delay_seconds: int = 0,
        reason: str = "",
        timeout: float | None = None,
    ) -> list[consumer_group_service_pb2.SettleResult]:
        """Nack deliveries by id, from anywhere; one result each."""
        request = consumer_group_service_pb2.NackRequest(
            topic=topic,
            group=group,
            nacks=[
                consumer_group_service_pb2.Nacked(
                    delivery_id=i, delay_seconds=delay_seconds, reason=reason
                )
                for i in delivery_ids
            ],
        )
        response = await self._call(self._groups.Nack, request, timeout)
        return list(response.results)

    async def extend_leases(
        self, topic: str, group: str, delivery_ids: Sequence[str], *, timeout: float | None = None
    ) -> list[consumer_group_service_pb2.SettleResult]:
        """Renew leases by delivery id, from anywhere; one result each."""
        request = consumer_group_service_pb2.ExtendLeasesRequest(
            topic=topic, group=group, delivery_ids=delivery_ids
        )
        response = await self._call(self._groups.ExtendLeases, request, timeout)
        return list(response.results)
