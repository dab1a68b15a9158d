"""Client calls an operator makes on a topic: its retention limits and its carcel."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import cast

from packetbus.v1 import carcel_service_pb2, topic_service_pb2

from .._pages import each
from .._settling import SETTLEMENTS_PER_REQUEST
from .core import ClientCore


class TopicAdminCalls(ClientCore):
    """Topics: list, retention; carcel entries: list, get, requeue, purge."""

    async def set_topic_retention(
        self,
        topic: str,
        *,
        max_age_seconds: int = 0,
        max_packets: int = 0,
        max_bytes: int = 0,
        work_queue: bool = False,
        timeout: float | None = None,
    ) -> topic_service_pb2.SetTopicRetentionResponse:
        """Replace a topic's retention limits (0 = no limit) and apply them at once.

        work_queue: packets also leave once every consumer group has acked them.
        Idempotent: setting the same values again changes nothing.
        """
        policy = (
            topic_service_pb2.RETENTION_POLICY_WORK_QUEUE
            if work_queue
            else topic_service_pb2.RETENTION_POLICY_LIMITS
        )
        request = topic_service_pb2.SetTopicRetentionRequest(
            topic=topic,
            retention=topic_service_pb2.TopicRetention(
                max_age_seconds=max_age_seconds,
                max_packets=max_packets,
                max_bytes=max_bytes,
                policy=policy,
            ),
        )
        response = await self._call(self._topics.SetTopicRetention, request, timeout)
        return cast(topic_service_pb2.SetTopicRetentionResponse, response)

    async def get_topic_retention(
        self, topic: str, *, timeout: float | None = None
    ) -> topic_service_pb2.GetTopicRetentionResponse:
        """A topic's retention limits, and the packets (and bytes) it holds now."""
        request = topic_service_pb2.GetTopicRetentionRequest(topic=topic)
        response = await self._call(self._topics.GetTopicRetention, request, timeout)
        return cast(topic_service_pb2.GetTopicRetentionResponse, response)

    async def list_topics(
        self,
        prefix: str = "",
        *,
        page_size: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[topic_service_pb2.TopicSummary]:
        """The topics the server knows whose names start with `prefix` (all: ""), in
        name order, each with its log's length and first and last cursors, its
        retention, its consumer groups and carcel entries counted; only those the
        caller holds topics.subscribe on. Fetched `page_size` (0: the server's
        default, 100; at most 1000) at a time; `timeout` is per page.
        Raises PacketbusError (INVALID_ARGUMENT for a prefix that no topic name
        could start with)."""

        async def page(token: str) -> topic_service_pb2.ListTopicsResponse:
            request = topic_service_pb2.ListTopicsRequest(
                prefix=prefix, page_size=page_size, page_token=token
            )
            response = await self._call(self._topics.ListTopics, request, timeout)
            return cast(topic_service_pb2.ListTopicsResponse, response)

        async for topic in each(page, lambda response: response.topics):
            yield topic

    async def carcel_entries(
        self,
        topic: str = "",
        *,
        reason: str = "",
        page_size: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[carcel_service_pb2.CarcelEntry]:
        """Every carcel entry of `topic` (or of all topics), oldest first, optionally
        only those with `reason`; fetched a page at a time (`timeout` is per page)."""

        async def page(token: str) -> carcel_service_pb2.ListCarcelEntriesResponse:
            request = carcel_service_pb2.ListCarcelEntriesRequest(
                topic=topic, reason=reason, page_size=page_size, page_token=token
            )
            return await self._list_carcel(request, timeout)

        async for entry in each(page, lambda response: response.entries):
            yield entry

    async def _list_carcel(
        self, request: carcel_service_pb2.ListCarcelEntriesRequest, timeout: float | None
    ) -> carcel_service_pb2.ListCarcelEntriesResponse:
        return await self._call(self._carcel.ListCarcelEntries, request, timeout)

    async def get_carcel_entry(
        self, topic: str, entry_id: str, *, timeout: float | None = None
    ) -> carcel_service_pb2.CarcelEntry:
        request = carcel_service_pb2.GetCarcelEntryRequest(topic=topic, id=entry_id)
        response = await self._call(self._carcel.GetCarcelEntry, request, timeout)
        return cast(carcel_service_pb2.CarcelEntry, response.entry)

    async def requeue_carcel_entry(
        self, topic: str, entry_id: str, *, timeout: float | None = None
    ) -> str:
        """Validate a carceled packet again and deliver it once more to its consumer
        group; returns its new cursor."""
        request = carcel_service_pb2.RequeueCarcelEntryRequest(topic=topic, id=entry_id)
        response = await self._call(self._carcel.RequeueCarcelEntry, request, timeout)
        return str(response.cursor)

    async def purge_carcel(
        self, topic: str, entry_ids: Sequence[str] = (), *, timeout: float | None = None
    ) -> int:
        """Remove these carcel entries of `topic` (all of them when none are named);
        returns how many were removed. More than SETTLEMENTS_PER_REQUEST (1,000)
        ids go as several calls (the server's Limits.max_batch_packets refuses more
        per call), each with `timeout`.

        Raises PacketbusError: INVALID_ARGUMENT naming `ids[i]` for an id that is no
        carcel entry id (`i` counts within its call; earlier calls' purges stand,
        later calls are not made)."""
        ids = list(entry_ids)
        purged = 0
        for start in range(0, max(len(ids), 1), SETTLEMENTS_PER_REQUEST):
            request = carcel_service_pb2.PurgeCarcelEntriesRequest(
                topic=topic, ids=ids[start : start + SETTLEMENTS_PER_REQUEST]
            )
            response = await self._call(self._carcel.PurgeCarcelEntries, request, timeout)
            purged += int(response.purged)
        return purged
