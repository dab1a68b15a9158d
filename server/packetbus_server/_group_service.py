"""ConsumerGroupService: competing consumers with leases, settlements and redelivery.

The servicer validates, signs custody hops (Custodian) and keeps one Pull
stream's flow control; GroupStore does every Redis read and write.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import grpc
from google.rpc import code_pb2, status_pb2

from packetbus import _custody, _wire
from packetbus.v1 import (
    consumer_group_service_pb2 as pb,
)
from packetbus.v1 import (
    consumer_group_service_pb2_grpc,
    packet_service_pb2,
)

from . import _pull_wire, _status
from ._access import Permission, binding, require
from ._clock import StoreClock
from ._custodian import ChainEnd, Custodian, Hop, chain_end
from ._fields import is_stream_id, utf8_length
from ._group_store import (
    GroupSettings,
    GroupState,
    GroupStatus,
    GroupStore,
    Kind,
    Leased,
    Outcome,
    Settle,
    Settled,
)
from ._hop_store import HopStore, HopWrite
from ._limits import Limits
from ._observability import counting, metrics, tracing
from ._packet_service import caller_gone, storage_errors
from ._packing import packs
from ._store import cursor_millis
from ._validation import Violation, validate_agent_id, validate_group_name, validate_topic
from ._waits import retrieve_outcome

log = logging.getLogger("packetbus.server.groups")

# "<cursor>:<delivery count>", ASCII digits only (`\d` takes other scripts' digits too).
_DELIVERY_ID = re.compile(r"([0-9]{1,20}-[0-9]{1,20}):([0-9]{1,10})\Z")
MAX_DELIVERY = "max delivery attempts"
# Signing again after another hop got in first: a few rounds settle any race.
_SIGN_ROUNDS = 5
# How long a Pull stream waits for new entries before it looks for run-out leases.
_WAIT_MS = 1000
# How long after looking through all of them a busy Pull stream looks for run-out
# leases again (the look walks every outstanding delivery of the group): a lease
# that ran out is noticed this late at most. Below _WAIT_MS, so an idle stream
# looks on each wake-up.
_RESCAN_SECONDS = 0.9
_MAX_REASON = 1024


def delivery_id(cursor: str, count: int) -> str:
    return f"{cursor}:{count}"


@dataclass(slots=True)
class Held:
    """A delivery this server made (on a Pull stream): what its next hop links to."""

    tracking_id: str
    content_digest: bytes
    end: ChainEnd
    size: int
    lease_ends_ms: int
    expires_at_ms: int
    # Its producer's trace context, read only while tracing is on.
    trace: tracing.Carried | None = None


# Not frozen: made for every packet on the delivery path, where a frozen
# dataclass's __init__ (object.__setattr__ per field) costs four times as much.
@dataclass(slots=True)
class Request:
    """One settlement asked for, parsed."""

    kind: Kind
    delivery_id: str
    cursor: str = ""
    count: int = 0
    delay_ms: int = 0
    reason: str = ""
    problem: str = ""


def _parse(kind: Kind, ident: str, *, delay_s: int = 0, reason: str = "") -> Request:
    match = _DELIVERY_ID.match(ident)
    if match is None or not is_stream_id(match.group(1)):
        return Request(kind, ident, problem="not a delivery id (like 1700000000000-0:1)")
    if utf8_length(reason) > _MAX_REASON:
        return Request(kind, ident, problem=f"reason is longer than {_MAX_REASON} bytes (UTF-8)")
    return Request(kind, ident, match.group(1), int(match.group(2)), delay_s * 1000, reason=reason)


def _request(kind: Kind, ident: str, held: dict[str, Held]) -> Request:
    """As `_parse`; an id of a delivery `held` by the stream is one it made, so well-formed."""
    if ident in held:
        cursor, _, count = ident.rpartition(":")
        return Request(kind, ident, cursor, int(count))
    return _parse(kind, ident)


def _deliveries(r: Request) -> int:
    """Deliveries made of a packet settled by `r`: its count, except for a lease that
    ran out on the last attempt (a CARCEL request, made by the pull that found it),
    whose count the pull raised for a delivery it did not make."""
    return r.count - 1 if r.kind is Kind.CARCEL else r.count


def _nacked(nack: pb.Nacked) -> Request:
    kind = Kind.RELEASE if nack.release else Kind.NACK
    return _parse(kind, nack.delivery_id, delay_s=nack.delay_seconds, reason=nack.reason)


@dataclass(slots=True)
class Answer:
    """A settlement's result: written straight to a Pull stream, or as a SettleResult
    for the unary calls (an ack's result is made for every packet)."""

    delivery_id: str
    settlement: int
    code: int
    message: str = ""
    carcel_id: str = ""
    lease_ends_ms: int = 0

    def wire(self) -> bytes:
        return _pull_wire.settle_result(
            self.delivery_id,
            self.settlement,
            self.code,
            self.message,
            carcel_id=self.carcel_id,
            lease_ends_ms=self.lease_ends_ms,
        )

    def result(self) -> pb.SettleResult:
        result = pb.SettleResult(
            delivery_id=self.delivery_id,
            settlement=self.settlement,  # type: ignore[arg-type]
            status=status_pb2.Status(code=self.code, message=self.message),
            carcel_id=self.carcel_id,
        )
        if self.lease_ends_ms:
            result.lease_expires_at.FromMilliseconds(self.lease_ends_ms)
        return result


_SETTLEMENT = {
    Kind.ACK: pb.SETTLEMENT_ACK,
    Kind.NACK: pb.SETTLEMENT_NACK,
    Kind.RELEASE: pb.SETTLEMENT_NACK,
    Kind.EXTEND: pb.SETTLEMENT_EXTEND,
    Kind.CARCEL: pb.SETTLEMENT_NACK,
}
_ACTION = {
    Kind.ACK: _custody.ACKED,
    Kind.NACK: _custody.NACKED,
    Kind.RELEASE: _custody.RELEASED,
    Kind.CARCEL: _custody.CARCELED,
}


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


class _SecondSubscription(Exception):
    """A Pull stream's later request named a subscription again."""


@dataclass
class _Stream:
    """One Pull stream's state: the deliveries it holds, for flow control and custody."""

    topic: str
    group: str
    consumer: str
    settings: GroupSettings
    max_packets: int
    max_bytes: int
    batch: int
    held: dict[str, Held] = field(default_factory=dict)
    held_bytes: int = 0
    outbox: list[Answer] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # When to look for run-out leases again (time.monotonic()).
    scan_at: float = 0.0
    # The Pull call: its traceparent metadata parents the stream's spans.
    context: grpc.aio.ServicerContext | None = None

    def room(self, now_ms: int) -> int:
        # A lease that ran out is no longer this consumer's to count.
        for ident in [i for i, h in self.held.items() if h.lease_ends_ms <= now_ms]:
            self.release(ident)
        if self.held and self.held_bytes >= self.max_bytes:
            return 0
        return max(0, min(self.batch, self.max_packets - len(self.held)))

    def byte_room(self, budget: int) -> int:
        """How many bytes of packets the next pull may lease: one reply's worth, within
        what the consumer still accepts (at least one byte: one packet always fits)."""
        return max(1, min(budget, self.max_bytes - self.held_bytes))

    def hold(self, ident: str, held: Held) -> None:
        self.held[ident] = held
        self.held_bytes += held.size

    def release(self, ident: str) -> None:
        held = self.held.pop(ident, None)
        if held is not None:
            self.held_bytes -= held.size


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
            await context.abort(
                grpc.StatusCode.ALREADY_EXISTS,
                f"group {request.name!r} on topic {request.topic!r} exists with other "
                f"settings (ack deadline {settings.ack_deadline_ms // 1000}s, "
                f"max delivery attempts {settings.max_attempts})",
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
            await self._abort_no_group(context, request.topic, request.name)
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

    @staticmethod
    async def _abort_no_group(context: grpc.aio.ServicerContext, topic: str, name: str) -> None:
        await context.abort(
            grpc.StatusCode.NOT_FOUND,
            f"no consumer group {name!r} on topic {topic!r} (CreateConsumerGroup first)",
        )

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
            await self._abort_no_group(context, sub.topic, sub.group)
            raise AssertionError("context.abort always raises")
        stream = _Stream(
            topic=sub.topic,
            group=sub.group,
            consumer=sub.consumer,
            settings=settings,
            max_packets=sub.max_outstanding_packets or 1000,
            max_bytes=sub.max_outstanding_bytes or 64 * 1024 * 1024,
            batch=batch,
            context=context,
        )
        async with (
            self._pull_streams,
            storage_errors(context, retry_hint="settle what you hold and pull again"),
        ):
            settler = asyncio.create_task(self._settle_from(requests, first, stream, context))
            waiter: asyncio.Task[None] | None = None
            try:
                while not caller_gone(context):
                    if settler.done():
                        # The consumer half-closed (or settling failed: this
                        # raises): confirm what it settled, deliver nothing more.
                        if isinstance(settler.exception(), _SecondSubscription):
                            await _status.abort_invalid(
                                context,
                                "invalid pull request",
                                [
                                    Violation(
                                        "subscription",
                                        "ONLY_FIRST",
                                        "only the first request names it",
                                    )
                                ],
                            )
                        settler.result()
                        if stream.outbox:
                            yield _pull_wire.pull_response([], [a.wire() for a in stream.outbox])
                        return
                    room = stream.room(self._clock.now_ms())
                    deliveries: list[bytes] = []
                    newest = None
                    if room:
                        pulled = await self._store.pull(
                            stream.topic,
                            stream.group,
                            stream.consumer,
                            room,
                            max_bytes=stream.byte_room(self._limits.reply_budget_bytes),
                            scan=time.monotonic() >= stream.scan_at,
                        )
                        if pulled is None:
                            await self._abort_no_group(context, stream.topic, stream.group)
                            return
                        if pulled.scanned:
                            stream.scan_at = time.monotonic() + _RESCAN_SECONDS
                        newest = pulled.newest
                        deliveries = await self._deliver(stream, pulled.entries, pulled.now_ms)
                    if deliveries or stream.outbox:
                        settled, stream.outbox = stream.outbox, []
                        # Leased within the byte budget already; their hops (or
                        # many settlements) can still tip a reply over it: then it
                        # goes as several.
                        items = [(True, d) for d in deliveries]
                        items += [(False, a.wire()) for a in settled]
                        for part in packs(
                            items, lambda i: len(i[1]), self._limits.reply_budget_bytes
                        ):
                            yield _pull_wire.pull_response(
                                [d for is_delivery, d in part if is_delivery],
                                [s for is_delivery, s in part if not is_delivery],
                            )
                        continue
                    # Nothing to send: wait for new entries, a settlement, or the
                    # next look for run-out leases.
                    stream.wake.clear()
                    woken: asyncio.Future[object] = asyncio.ensure_future(stream.wake.wait())
                    waits: set[asyncio.Future[object]] = {woken}
                    if newest is not None:
                        if waiter is None or waiter.done():
                            waiter = asyncio.create_task(
                                self._store.wait_for_entries(stream.topic, newest, _WAIT_MS)
                            )
                            # It may fail after the stream's last look at it.
                            waiter.add_done_callback(retrieve_outcome)
                        waits.add(waiter)  # type: ignore[arg-type]
                    waits.add(settler)  # type: ignore[arg-type]
                    try:
                        await asyncio.wait(
                            waits, timeout=_WAIT_MS / 1000, return_when=asyncio.FIRST_COMPLETED
                        )
                    finally:
                        # Also when the stream ends meanwhile (cancelled): a wait
                        # left pending would be destroyed pending.
                        woken.cancel()
                    if waiter is not None and waiter.done() and waiter.exception() is not None:
                        waiter = None  # a failed wait only delays the next look
            finally:
                settler.cancel()
                if waiter is not None:
                    waiter.cancel()
                with contextlib.suppress(BaseException):
                    await settler

    async def _deliver(
        self, stream: _Stream, entries: Sequence[Leased], now_ms: int
    ) -> list[bytes]:
        """Sign and store each entry's "delivered" hop (or, past its last attempt, move
        it to the carcel); the deliveries to send, with their chains, serialized."""
        if not entries:
            return []
        max_attempts = stream.settings.max_attempts
        counterpart = f"group:{stream.group} consumer:{stream.consumer}"
        poison = [e for e in entries if e.count > max_attempts]
        fresh = [e for e in entries if e.count <= max_attempts]
        if poison:
            await self._carcel_run_out(stream, poison)
        if not fresh:
            return []
        # From the expansion of stored-once entries when there was one: parsing
        # the ingest chain again and hashing the content cost ~4 us per delivery.
        digests = [
            e.known.content_digest
            if e.known is not None
            else hashlib.sha256(e.payload[: e.content_length]).digest()
            for e in fresh
        ]
        # Optimistic: a first delivery usually finds no hops yet; a wrong guess
        # is answered with the hops there are, and signed again after them.
        hops: list[list[bytes]] = [[] for _ in fresh]
        ends = [
            ChainEnd(e.known.ingest_entries, 0, e.known.last_hash)
            if e.known is not None
            else chain_end(e.payload, e.content_length, [])
            for e in fresh
        ]
        mine: list[bytes | None] = [None] * len(fresh)
        todo = list(range(len(fresh)))
        for _ in range(_SIGN_ROUNDS):
            signed = self._custodian.sign_hops(
                [
                    Hop(
                        fresh[i].tracking_id,
                        digests[i],
                        ends[i],
                        _custody.DELIVERED,
                        counterpart=counterpart,
                        attempt=fresh[i].count,
                    )
                    for i in todo
                ],
                self._clock.now_ns(),
            )
            if signed is None:  # this server signs no custody entries: deliver as they are
                todo = []
                break
            replies = await self._hops.append(
                stream.topic,
                [
                    HopWrite(
                        fresh[i].tracking_id,
                        ends[i].hops,
                        s.entry,
                        s.hash,
                        fresh[i].expires_at_ms,
                    )
                    for i, s in zip(todo, signed, strict=True)
                ],
            )
            retry = []
            for i, s, reply in zip(todo, signed, replies, strict=True):
                if reply is None:
                    mine[i] = s.entry
                    ends[i] = ends[i].after(s.hash)
                else:
                    hops[i] = reply[1:]
                    ends[i] = ChainEnd(ends[i].ingest_entries, len(hops[i]), reply[0])
                    retry.append(i)
            todo = retry
            if not todo:
                break
        else:
            log.warning("%d deliveries kept losing the race for their custody hop", len(todo))

        lease_ends_ms = now_ms + stream.settings.ack_deadline_ms
        lost_race = set(todo)
        tracer = tracing.active
        traced: list[tracing.Carried] = []
        out = []
        redelivered = 0
        for i, entry in enumerate(fresh):
            if i in lost_race:
                continue  # not delivered now: its lease runs out and it comes back
            if entry.count > 1:
                redelivered += 1
            own = mine[i]
            chain = [*hops[i], own] if own is not None else hops[i]
            payload = _wire.with_chain(entry.payload, chain)
            ident = delivery_id(entry.cursor, entry.count)
            delivery = _pull_wire.delivery(
                ident,
                entry.count,
                lease_ends_ms,
                packet=payload,
                receipt_bytes=_pull_wire.receipt(
                    stream.topic, entry.cursor, cursor_millis(entry.cursor), entry.expires_at_ms
                ),
                content=entry.payload[: entry.content_length],
            )
            trace = None
            if tracer is not None:
                trace = tracing.carried_in(entry.payload[: entry.content_length], entry.tracking_id)
                traced.append(trace)
            stream.hold(
                ident,
                Held(
                    entry.tracking_id,
                    digests[i],
                    ends[i],
                    len(payload),
                    lease_ends_ms,
                    entry.expires_at_ms,
                    trace,
                ),
            )
            out.append(delivery)
        if tracer is not None:
            tracer.batch(
                stream.context,
                ("receive", "deliver"),
                stream.topic,
                traced,
                group=stream.group,
                link_attributes=[
                    {"packetbus.delivery.attempt": e.count}
                    for i, e in enumerate(fresh)
                    if i not in lost_race
                ],
            )
        if out:
            metrics.packets_delivered.labels("group").inc(len(out))
        counting.redelivered(stream.group, redelivered)
        return out

    async def _carcel_run_out(self, stream: _Stream, entries: Sequence[Leased]) -> None:
        """Entries whose lease ran out on their last attempt go to the carcel."""
        requests = [
            Request(Kind.CARCEL, delivery_id(e.cursor, e.count), e.cursor, e.count) for e in entries
        ]
        known = {
            r.delivery_id: Held(
                e.tracking_id,
                hashlib.sha256(e.payload[: e.content_length]).digest(),
                chain_end(e.payload, e.content_length, []),
                0,
                0,
                e.expires_at_ms,
            )
            for r, e in zip(requests, entries, strict=True)
        }
        results = await self._settle(
            stream.topic,
            stream.group,
            stream.settings,
            requests,
            known,
            reason=f"its lease ran out on its last delivery attempt ({stream.settings.max_attempts})",
        )
        for r in results:
            if r.carcel_id:
                log.info(
                    "moved %s of %s/%s to the carcel (%s)",
                    r.delivery_id,
                    stream.topic,
                    stream.group,
                    MAX_DELIVERY,
                )

    # -- settlements -----------------------------------------------------------------

    async def _settle_from(
        self,
        requests: AsyncIterator[pb.PullRequest],
        first: pb.PullRequest,
        stream: _Stream,
        context: grpc.aio.ServicerContext,
    ) -> None:
        """Settle what the consumer sends on its stream, until it half-closes (then the
        stream ends once those settlements are confirmed)."""
        request: pb.PullRequest | None = first
        while True:
            if request is not None:
                if request.HasField("subscription") and request is not first:
                    # Refused by the handler's own task (Pull): an abort from this
                    # task could meet a write of the handler's and fail INTERNAL.
                    raise _SecondSubscription
                parsed = [
                    *(_request(Kind.ACK, i, stream.held) for i in request.ack_ids),
                    *(_nacked(n) for n in request.nacks),
                    *(_parse(Kind.EXTEND, i) for i in request.extend_ids),
                ]
                if parsed:
                    results = await self._settle(
                        stream.topic,
                        stream.group,
                        stream.settings,
                        parsed,
                        stream.held,
                        context=context,
                    )
                    for p, r in zip(parsed, results, strict=True):
                        if p.kind in (Kind.NACK, Kind.RELEASE) and r.code == code_pb2.OK:
                            # Its lease runs out after the delay: look for it then.
                            stream.scan_at = min(
                                stream.scan_at, time.monotonic() + p.delay_ms / 1000
                            )
                        if not (r.settlement == pb.SETTLEMENT_EXTEND and r.code == code_pb2.OK):
                            stream.release(r.delivery_id)
                        elif r.delivery_id in stream.held:
                            stream.held[r.delivery_id].lease_ends_ms = r.lease_ends_ms
                    stream.outbox.extend(results)
                    stream.wake.set()
            try:
                request = await anext(requests)
            except StopAsyncIteration:
                return  # half-closed: the consumer is done

    async def _settle(
        self,
        topic: str,
        group: str,
        settings: GroupSettings,
        requests: Sequence[Request],
        held: dict[str, Held],
        *,
        reason: str = "",
        context: grpc.aio.ServicerContext | None = None,
    ) -> list[Answer]:
        """Settle `requests` (in one script call per round); one result each, in order;
        with tracing on, an `ack`/`nack` span each for those settled (`context`: the
        call, whose traceparent parents them)."""
        results: list[Answer | None] = [None] * len(requests)
        deadline_ms = settings.ack_deadline_ms
        valid: list[int] = []
        for i, r in enumerate(requests):
            if r.problem:
                results[i] = self._result(r, code_pb2.INVALID_ARGUMENT, r.problem)
            elif r.kind is Kind.NACK and r.delay_ms > deadline_ms:
                results[i] = self._result(
                    r,
                    code_pb2.INVALID_ARGUMENT,
                    f"delay_seconds must be at most the ack deadline ({deadline_ms // 1000})",
                )
            else:
                valid.append(i)
        # A nack of the last attempt moves the packet to the carcel instead.
        kinds = {
            i: Kind.CARCEL
            if requests[i].kind is Kind.NACK and requests[i].count >= settings.max_attempts
            else requests[i].kind
            for i in valid
        }
        known = dict(held)
        unknown = [i for i in valid if requests[i].delivery_id not in known]
        if unknown:
            await self._learn(topic, [requests[i] for i in unknown], known)
            for i in unknown:
                if requests[i].delivery_id not in known:
                    results[i] = self._result(
                        requests[i],
                        code_pb2.NOT_FOUND,
                        f"{requests[i].delivery_id} is not outstanding: its packet is gone "
                        "from the topic",
                    )
            valid = [i for i in valid if requests[i].delivery_id in known]

        todo = valid
        for _ in range(_SIGN_ROUNDS):
            if not todo:
                break
            hop_kinds = [i for i in todo if kinds[i] is not Kind.EXTEND]
            signed = self._custodian.sign_hops(
                [
                    Hop(
                        known[requests[i].delivery_id].tracking_id,
                        known[requests[i].delivery_id].content_digest,
                        known[requests[i].delivery_id].end,
                        _ACTION[kinds[i]],
                        counterpart=f"group:{group}",
                        attempt=_deliveries(requests[i]),
                        reason=MAX_DELIVERY if kinds[i] is Kind.CARCEL else requests[i].reason,
                    )
                    for i in hop_kinds
                ],
                self._clock.now_ns(),
            )
            entries = dict(zip(hop_kinds, signed or [], strict=False))
            items = []
            for i in todo:
                r, h = requests[i], known[requests[i].delivery_id]
                s = entries.get(i)
                items.append(
                    Settle(
                        kind=kinds[i],
                        cursor=r.cursor,
                        count=r.count,
                        tracking_id=h.tracking_id,
                        expected_hops=h.end.hops,
                        entry=s.entry if s else b"",
                        entry_hash=s.hash if s else b"",
                        delay_ms=r.delay_ms,
                        # One line each: the script splits them at line breaks.
                        carcel=(
                            MAX_DELIVERY,
                            " ".join((r.reason or reason).splitlines()),
                            f"group:{group}",
                        ),
                        deliveries=_deliveries(r),
                        expires_at_ms=h.expires_at_ms,
                    )
                )
            settled = await self._store.settle(topic, group, items)
            if settled is None:
                for i in todo:
                    results[i] = self._result(
                        requests[i],
                        code_pb2.NOT_FOUND,
                        f"no consumer group {group!r} on topic {topic!r} any more",
                    )
                break
            retry = []
            carceled = 0
            for i, outcome in zip(todo, settled, strict=True):
                if kinds[i] is Kind.CARCEL and outcome.outcome is Outcome.OK:
                    carceled += 1  # a retry of it answers GONE: counted once
                if outcome.outcome is Outcome.STALE:
                    h = known[requests[i].delivery_id]
                    h.end = ChainEnd(h.end.ingest_entries, int(outcome.value), outcome.last_hash)
                    retry.append(i)
                else:
                    results[i] = self._settled(requests[i], kinds[i], outcome)
            counting.carceled(group, carceled)
            todo = retry
        for i in todo:
            results[i] = self._result(
                requests[i], code_pb2.ABORTED, "the packet's chain kept changing; settle again"
            )
        assert all(r is not None for r in results)
        if tracing.active is not None:
            _trace_settled(tracing.active, context, topic, group, requests, results, known)
        return results  # type: ignore[return-value]

    async def _learn(self, topic: str, requests: Sequence[Request], known: dict[str, Held]) -> None:
        """Where the chains of deliveries this stream did not make end, read from the store."""
        found = await self._store.read_entries(topic, [r.cursor for r in requests])
        present = [(r, f) for r, f in zip(requests, found, strict=True) if f is not None]
        hops = await self._hops.read(topic, [f[0] for _, f in present])
        traced = tracing.active is not None
        for (r, (tid, payload, content_length, ttl_ms, rebuilt)), entries in zip(
            present, hops, strict=True
        ):
            # A stored-once entry's expansion computed its digest and ingest end.
            known[r.delivery_id] = Held(
                tid,
                rebuilt.content_digest
                if rebuilt is not None
                else hashlib.sha256(payload[:content_length]).digest(),
                chain_end(
                    payload,
                    content_length,
                    entries,
                    None if rebuilt is None else (rebuilt.ingest_entries, rebuilt.last_hash),
                ),
                0,
                0,
                cursor_millis(r.cursor) + ttl_ms,
                tracing.carried_in(payload[:content_length], tid) if traced else None,
            )

    @staticmethod
    def _result(r: Request, code: int, message: str = "") -> Answer:
        return Answer(r.delivery_id, _SETTLEMENT[r.kind], code, message)

    def _settled(self, r: Request, kind: Kind, outcome: Settled) -> Answer:
        if outcome.outcome is Outcome.OK:
            result = self._result(r, code_pb2.OK)
            if kind is Kind.EXTEND:
                result.lease_ends_ms = int(outcome.value)
            elif kind is Kind.CARCEL:
                result.carcel_id = outcome.value
            return result
        if outcome.outcome is Outcome.LOST:
            return self._result(
                r,
                code_pb2.FAILED_PRECONDITION,
                f"the lease of {r.delivery_id} ran out: the packet was delivered again "
                f"(delivery {outcome.value})",
            )
        last = outcome.value
        if last == f"{r.cursor}:{r.count} {kind.value}":
            # This very settlement, replayed (a retry after a lost reply).
            return self._result(r, code_pb2.OK)
        detail = f" (last settled: {last})" if last else ""
        if last.startswith(f"{r.cursor}:") and last.endswith(" carcel"):
            return self._result(
                r,
                code_pb2.FAILED_PRECONDITION,
                f"{r.delivery_id} is not outstanding: the packet was moved to the carcel",
            )
        return self._result(r, code_pb2.NOT_FOUND, f"{r.delivery_id} is not outstanding{detail}")

    # -- settling outside a stream -------------------------------------------------------

    async def _unary(
        self,
        context: grpc.aio.ServicerContext,
        topic: str,
        group: str,
        requests: list[Request],
        field: str = "delivery_ids",
    ) -> list[pb.SettleResult]:
        """Settle `requests`, named by the request's repeated `field` (the path its
        violations name: "delivery_ids", or "nacks" for a Nack)."""
        violations = self._check_names(topic, group, "group")
        if not requests:
            violations.append(Violation(field, "REQUIRED", "name at least one delivery"))
        if len(requests) > self._limits.max_batch_packets:
            violations.append(
                Violation(
                    field,
                    "BATCH_TOO_LARGE",
                    f"at most {self._limits.max_batch_packets} per call",
                )
            )
        if violations:
            await _status.abort_invalid(context, "invalid settlement", violations)
        async with storage_errors(context):
            settings = await self._store.settings(topic, group)
            if settings is None:
                await self._abort_no_group(context, topic, group)
                raise AssertionError("context.abort always raises")
            answers = await self._settle(topic, group, settings, requests, {}, context=context)
        return [a.result() for a in answers]

    async def Acknowledge(
        self, request: pb.AcknowledgeRequest, context: grpc.aio.ServicerContext
    ) -> pb.AcknowledgeResponse:
        requests = [_parse(Kind.ACK, i) for i in request.delivery_ids]
        return pb.AcknowledgeResponse(
            results=await self._unary(context, request.topic, request.group, requests)
        )

    async def Nack(
        self, request: pb.NackRequest, context: grpc.aio.ServicerContext
    ) -> pb.NackResponse:
        requests = [_nacked(n) for n in request.nacks]
        return pb.NackResponse(
            results=await self._unary(context, request.topic, request.group, requests, "nacks")
        )

    async def ExtendLeases(
        self, request: pb.ExtendLeasesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExtendLeasesResponse:
        requests = [_parse(Kind.EXTEND, i) for i in request.delivery_ids]
        return pb.ExtendLeasesResponse(
            results=await self._unary(context, request.topic, request.group, requests)
        )


def _trace_settled(
    tracer: tracing.Tracer,
    context: grpc.aio.ServicerContext | None,
    topic: str,
    group: str,
    requests: Sequence[Request],
    results: Sequence[Answer | None],
    known: dict[str, Held],
) -> None:
    """An `ack {topic}` and a `nack {topic}` span (settle) over the deliveries
    settled so, each linked to its packet's producer context."""
    for kind, name in ((Kind.ACK, "ack"), (Kind.NACK, "nack")):
        carried = [
            held.trace or tracing.Carried(held.tracking_id)
            for r, a in zip(requests, results, strict=True)
            if r.kind is kind
            and a is not None
            and a.code == code_pb2.OK
            and (held := known.get(r.delivery_id)) is not None
        ]
        tracer.batch(context, ("settle", name), topic, carried, group=group)
