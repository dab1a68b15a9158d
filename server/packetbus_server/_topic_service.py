"""TopicService: a topic's own retention limits, like a JetStream stream's."""

from __future__ import annotations

import grpc

from packetbus.v1 import topic_service_pb2 as pb
from packetbus.v1 import topic_service_pb2_grpc

from . import _status
from ._access.gate import allows
from ._access.permissions import Permission
from ._field_rules import validate_topic
from ._limits import Limits
from ._storage_errors import storage_errors
from ._topic_listing import TopicLister, TopicSummary, page_request
from ._topic_store import Retention, TopicStore
from ._validation import Violation

MAX_AGE_SECONDS = 86_400  # a packet's longest TTL: a longer age limit means nothing
MAX_PACKETS = 1_000_000_000
MIN_BYTES = 1024  # below one packet's envelope: a limit that keeps nothing
MAX_BYTES = 1 << 40

_POLICIES = {
    pb.RETENTION_POLICY_UNSPECIFIED: False,
    pb.RETENTION_POLICY_LIMITS: False,
    pb.RETENTION_POLICY_WORK_QUEUE: True,
}


def _limit(out: list[Violation], name: str, value: int, low: int, high: int) -> None:
    """A limit is 0 (none) or in low..high."""
    if value and not low <= value <= high:
        out.append(
            Violation(f"retention.{name}", "RANGE", f"must be 0 (no limit) or {low}..{high}")
        )


def check_retention(out: list[Violation], retention: pb.TopicRetention) -> None:
    """Bounds of each limit (0 = none); an unknown policy is refused."""
    _limit(out, "max_age_seconds", retention.max_age_seconds, 1, MAX_AGE_SECONDS)
    _limit(out, "max_packets", retention.max_packets, 1, MAX_PACKETS)
    _limit(out, "max_bytes", retention.max_bytes, MIN_BYTES, MAX_BYTES)
    if retention.policy not in _POLICIES:
        out.append(Violation("retention.policy", "ENUM", "not a known RetentionPolicy"))


def _message(retention: Retention) -> pb.TopicRetention:
    limited = retention.max_age_ms or retention.max_packets or retention.max_bytes
    policy = (
        pb.RETENTION_POLICY_WORK_QUEUE
        if retention.work_queue
        else pb.RETENTION_POLICY_LIMITS
        if limited
        else pb.RETENTION_POLICY_UNSPECIFIED
    )
    return pb.TopicRetention(
        max_age_seconds=retention.max_age_ms // 1000,
        max_packets=retention.max_packets,
        max_bytes=retention.max_bytes,
        policy=policy,
    )


def _summary_message(summary: TopicSummary) -> pb.TopicSummary:
    return pb.TopicSummary(
        name=summary.name,
        packets=summary.packets,
        first_cursor=summary.first_cursor,
        last_cursor=summary.last_cursor,
        retention=_message(summary.retention),
        consumer_groups=summary.consumer_groups,
        carcel_entries=summary.carcel_entries,
    )


def _may_read(topic: str) -> bool:
    """Whether the caller may see `topic` in a listing: topics.subscribe on it."""
    return allows(Permission.TOPICS_SUBSCRIBE, topic)


class TopicService(topic_service_pb2_grpc.TopicServiceServicer):
    def __init__(self, store: TopicStore, limits: Limits, lister: TopicLister) -> None:
        self._store = store
        self._limits = limits
        self._lister = lister

    async def SetTopicRetention(
        self, request: pb.SetTopicRetentionRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetTopicRetentionResponse:
        violations: list[Violation] = []
        validate_topic(violations, "topic", request.topic, self._limits.max_topic_length)
        check_retention(violations, request.retention)
        if violations:
            await _status.abort_invalid(context, "invalid topic retention", violations)
        r = request.retention
        retention = Retention(
            max_age_ms=r.max_age_seconds * 1000,
            max_packets=r.max_packets,
            max_bytes=r.max_bytes,
            work_queue=_POLICIES[r.policy],
        )
        async with storage_errors(context):
            removed = await self._store.set_retention(request.topic, retention)
        return pb.SetTopicRetentionResponse(retention=_message(retention), removed=removed)

    async def GetTopicRetention(
        self, request: pb.GetTopicRetentionRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetTopicRetentionResponse:
        violations: list[Violation] = []
        validate_topic(violations, "topic", request.topic, self._limits.max_topic_length)
        if violations:
            await _status.abort_invalid(context, "invalid topic", violations)
        async with storage_errors(context):
            state = await self._store.get_retention(request.topic)
        return pb.GetTopicRetentionResponse(
            retention=_message(state.retention),
            packets=state.packets,
            stored_bytes=state.stored_bytes,
        )

    async def ListTopics(
        self, request: pb.ListTopicsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTopicsResponse:
        violations: list[Violation] = []
        page = page_request(violations, request, self._limits.max_topic_length, _may_read)
        if violations:
            await _status.abort_invalid(context, "invalid topic listing", violations)
        async with storage_errors(context):
            topics, token = await self._lister.page(
                page, _may_read, _summary_message, self._limits.reply_budget_bytes
            )
        return pb.ListTopicsResponse(topics=topics, next_page_token=token)
