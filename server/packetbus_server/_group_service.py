"""ConsumerGroupService: competing consumers with leases, settlements and redelivery.

The servicer validates; the work is done by its parts: a Pull stream's loop
(`_group_pull.PullLoop`), its deliveries and their "delivered" hops
(`_group_delivery.Delivery`), settlements and their hops (`_group_settling.Settler`).
GroupStore does every Redis read and write.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TypeVar

import grpc

from packetbus.v1 import (
    consumer_group_service_pb2 as pb,
)
from packetbus.v1 import (
    consumer_group_service_pb2_grpc,
    packet_service_pb2,
)

from . import _status
from ._access import Permission, binding, require
from ._clock import StoreClock
from ._custodian import Custodian
from ._field_rules import validate_agent_id, validate_group_name, validate_topic
from ._fields import is_stream_id
from ._group_delivery import Delivery, PullStream
from ._group_pull import PullLoop, abort_no_group
from ._group_settling import Settler
from ._group_store import GroupState, GroupStatus, GroupStore, Kind
from ._hop_store import HopStore
from ._limits import Limits
from ._settle_requests import Request, nacked, parse_request
from ._storage_errors import storage_errors
from ._validation import Violation

_Item = TypeVar("_Item")


def _parse_ack(delivery_id: str) -> Request:
    return parse_request(Kind.ACK, delivery_id)


def _parse_extend(delivery_id: str) -> Request:
    return parse_request(Kind.EXTEND, delivery_id)


def group_message(topic: str, state: GroupState) -> pb.ConsumerGroup:
    group = pb.ConsumerGroup(
        topic=topic,
        name=state.name,
        ack_deadline_seconds=state.settings.ack_deadline_ms // 1000,
        max_delivery_attempts=state.settings.max_attempts,
        outstanding=state.outstanding,
        consumers=state.consumers,
        last_delivered_cursor=state.last_delivered,
    )
    if state.lag is not None:
        group.lag = state.lag
    group.created_at.FromMilliseconds(state.settings.created_ms)
    return group


class ConsumerGroupService(consumer_group_service_pb2_grpc.ConsumerGroupServiceServicer):
    def __init__(
        self,
        store: GroupStore,
        hops: HopStore,
        custodian: Custodian,
        limits: Limits,
        pull_streams: asyncio.Semaphore,
        *,
        clock: StoreClock,
    ) -> None:
        self._store = store
        # The store's clock: leases are written by it (scripts), so judged by it.
        self._clock = clock
        self._hops = hops
        self._custodian = custodian
        self._limits = limits
        self._pull_streams = pull_streams
        self._settler = Settler(store, hops, custodian, clock=clock)
        self._pulls = PullLoop(
            store,
            Delivery(hops, custodian, self._settler, clock=clock),
            self._settler,
            limits,
            clock=clock,
        )

    # -- group lifecycle ---------------------------------------------------------------

    def _check_names(
        self, topic: str, name: str, field_name: str = "name", topic_field: str = "topic"
    ) -> list[Violation]:
        violations: list[Violation] = []
        validate_topic(violations, topic_field, topic, self._limits.max_topic_length)
        validate_group_name(violations, field_name, name)
        return violations

    async def CreateConsumerGroup(
        self, request: pb.CreateConsumerGroupRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateConsumerGroupResponse:
        violations = self._check_names(request.topic, request.name)
        deadline = request.ack_deadline_seconds or self._limits.default_ack_deadline_seconds
        low, high = self._limits.min_ack_deadline_seconds, self._limits.max_ack_deadline_seconds
        if not low <= deadline <= high:
            violations.append(
                Violation("ack_deadline_seconds", "RANGE", f"must be {low}..{high}; got {deadline}")
            )
        attempts = request.max_delivery_attempts or self._limits.default_max_delivery_attempts
        if not 1 <= attempts <= 100:
            violations.append(
                Violation("max_delivery_attempts", "RANGE", f"must be 1..100; got {attempts}")
            )
        start = request.WhichOneof("start")
        if start == "after_cursor":
            if not is_stream_id(request.after_cursor):
                violations.append(
                    Violation(
                        "after_cursor",
                        "CURSOR_FORMAT",
                        "must be a cursor from a receipt, like 1700000000000-0",
                    )
                )
            first = request.after_cursor
        elif request.start_position == packet_service_pb2.START_POSITION_EARLIEST:
            first = "0"
        else:
            first = "$"
        if violations:
            await _status.abort_invalid(context, "invalid consumer group", violations)
        async with storage_errors(context):
            status, settings = await self._store.create(
                request.topic,
                request.name,
                start=first,
                ack_deadline_ms=deadline * 1000,
                max_attempts=attempts,
            )
        if status is GroupStatus.CONFLICT:
            await _status.abort_with_reason(
                context,
                grpc.StatusCode.ALREADY_EXISTS,
                f"group {request.name!r} on topic {request.topic!r} exists with other "
                f"settings (ack deadline {settings.ack_deadline_ms // 1000}s, "
                f"max delivery attempts {settings.max_attempts})",
                "GROUP_SETTINGS_DIFFER",
            )
        async with storage_errors(context):
            states = await self._store.states(request.topic, request.name)
        state = states[0] if states else GroupState(request.name, settings, 0, 0, "0-0")
        return pb.CreateConsumerGroupResponse(
            group=group_message(request.topic, state), created=status is GroupStatus.CREATED
        )

    async def GetConsumerGroup(
        self, request: pb.GetConsumerGroupRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetConsumerGroupResponse:
        violations = self._check_names(request.topic, request.name)
        if violations:
            await _status.abort_invalid(context, "invalid consumer group", violations)
        async with storage_errors(context):
            states = await self._store.states(request.topic, request.name)
        if not states:
            await abort_no_group(context, request.topic, request.name)
        return pb.GetConsumerGroupResponse(group=group_message(request.topic, states[0]))

    async def ListConsumerGroups(
        self, request: pb.ListConsumerGroupsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListConsumerGroupsResponse:
        violations: list[Violation] = []
        validate_topic(violations, "topic", request.topic, self._limits.max_topic_length)
        if violations:
            await _status.abort_invalid(context, "invalid topic", violations)
        async with storage_errors(context):
            states = await self._store.states(request.topic)
        return pb.ListConsumerGroupsResponse(
            groups=[group_message(request.topic, s) for s in states]
        )

    async def DeleteConsumerGroup(
        self, request: pb.DeleteConsumerGroupRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteConsumerGroupResponse:
        violations = self._check_names(request.topic, request.name)
        if violations:
            await _status.abort_invalid(context, "invalid consumer group", violations)
        async with storage_errors(context):
            deleted = await self._store.delete(request.topic, request.name)
        return pb.DeleteConsumerGroupResponse(deleted=deleted)

    # -- deliveries ------------------------------------------------------------------

    # Yields PullResponse bytes written by _pull_wire (see _handlers._serializer), which
    # the generated servicer's signature does not foresee.
    async def Pull(  # type: ignore[override]
        self, requests: AsyncIterator[pb.PullRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.PullResponse | bytes]:
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            return
        sub = first.subscription
        if first.HasField("subscription"):
            # The rule's in-service part (permissions.RULES): topics.consume on the
            # first message's topic, an inbox only by its agent (_access.binding).
            # Later messages cannot name a topic (ONLY_FIRST below): one check holds
            # for the stream.
            await require(context, Permission.TOPICS_CONSUME, sub.topic)
            await binding.require_inbox_reader(context, sub.topic)
        violations = self._check_names(
            sub.topic, sub.group, "subscription.group", "subscription.topic"
        )
        if not first.HasField("subscription"):
            violations = [
                Violation("subscription", "REQUIRED", "the first request of a Pull names it")
            ]
        validate_agent_id(violations, "subscription.consumer", sub.consumer)
        batch = sub.max_batch_packets or self._limits.default_pull_batch_packets
        if batch > self._limits.max_subscribe_batch_packets:
            violations.append(
                Violation(
                    "subscription.max_batch_packets",
                    "BATCH_TOO_LARGE",
                    f"must be at most {self._limits.max_subscribe_batch_packets}",
                )
            )
        if violations:
            await _status.abort_invalid(context, "invalid pull subscription", violations)
        if self._pull_streams.locked():
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "this server has reached its stream limit; try another replica or later",
            )
        async with storage_errors(context):
            settings = await self._store.settings(sub.topic, sub.group)
        if settings is None:
            await abort_no_group(context, sub.topic, sub.group)
            raise AssertionError("context.abort always raises")
        stream = PullStream(
            topic=sub.topic,
            group=sub.group,
            consumer=sub.consumer,
            settings=settings,
            max_packets=sub.max_outstanding_packets or 1000,
            max_bytes=sub.max_outstanding_bytes or 64 * 1024 * 1024,
            batch=batch,
            context=context,
        )
        # aclosing: when this generator is closed at a yield, the loop's own cleanup
        # (its settling task) runs then, not when the loop is collected.
        async with (
            self._pull_streams,
            storage_errors(context, retry_hint="settle what you hold and pull again"),
            contextlib.aclosing(self._pulls.run(stream, requests, first, context)) as responses,
        ):
            async for response in responses:
                yield response

    # -- settling outside a stream -------------------------------------------------------

    async def _unary(
        self,
        context: grpc.aio.ServicerContext,
        topic: str,
        group: str,
        items: Sequence[_Item],
        parse: Callable[[_Item], Request],
        field: str = "delivery_ids",
    ) -> list[pb.SettleResult]:
        """Settle `items` (each made a Request by `parse`), the request's repeated
        `field` (the path its violations name: "delivery_ids", or "nacks" for a
        Nack). Their count is checked before any is parsed: an oversized request
        costs nothing but its read."""
        violations = self._check_names(topic, group, "group")
        if not items:
            violations.append(Violation(field, "REQUIRED", "name at least one delivery"))
        if len(items) > self._limits.max_batch_packets:
            violations.append(
                Violation(
                    field,
                    "BATCH_TOO_LARGE",
                    f"at most {self._limits.max_batch_packets} per call",
                )
            )
        if violations:
            await _status.abort_invalid(context, "invalid settlement", violations)
        requests = [parse(i) for i in items]
        async with storage_errors(context):
            settings = await self._store.settings(topic, group)
            if settings is None:
                await abort_no_group(context, topic, group)
                raise AssertionError("context.abort always raises")
            answers = await self._settler.settle(
                topic, group, settings, requests, {}, context=context
            )
        return [a.result() for a in answers]

    async def Acknowledge(
        self, request: pb.AcknowledgeRequest, context: grpc.aio.ServicerContext
    ) -> pb.AcknowledgeResponse:
        results = await self._unary(
            context, request.topic, request.group, request.delivery_ids, _parse_ack
        )
        return pb.AcknowledgeResponse(results=results)

    async def Nack(
        self, request: pb.NackRequest, context: grpc.aio.ServicerContext
    ) -> pb.NackResponse:
        results = await self._unary(
            context, request.topic, request.group, request.nacks, nacked, "nacks"
        )
        return pb.NackResponse(results=results)

    async def ExtendLeases(
        self, request: pb.ExtendLeasesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExtendLeasesResponse:
        results = await self._unary(
            context, request.topic, request.group, request.delivery_ids, _parse_extend
        )
        return pb.ExtendLeasesResponse(results=results)
