"""A Pull stream's loop: lease what the consumer has room for, deliver it, confirm
its settlements, and wait for new entries, a settlement or the next look for leases
that ran out. ConsumerGroupService.Pull validates the subscription and runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator

import grpc
from google.rpc import code_pb2

from packetbus.v1 import consumer_group_service_pb2 as pb

from . import _pull_wire, _status
from ._clock import StoreClock
from ._group_delivery import Delivery, PullStream
from ._group_settling import Settler
from ._group_store import GroupStore, Kind
from ._limits import Limits
from ._packing import packs
from ._settle_requests import held_request, nacked, parse_request
from ._stream_ends import caller_gone
from ._validation import Violation
from ._waits import retrieve_outcome

# How long a Pull stream waits for new entries before it looks for run-out leases.
_WAIT_MS = 1000
# How long after looking through all of them a busy Pull stream looks for run-out
# leases again (the look walks every outstanding delivery of the group): a lease
# that ran out is noticed this late at most. Below _WAIT_MS, so an idle stream
# looks on each wake-up.
_RESCAN_SECONDS = 0.9

# After a stream releases deliveries it does not pull for this long (seconds). A
# release is for deliveries the consumer will not look at, most often because it
# is closing: it releases what it holds, then half-closes. Pulling at once leased
# them straight back to the same stream, which released them again (two custody
# hops a round) until its half-close was read; paused, the stream sees the
# half-close first and the packets go to the group's other consumers.
_AFTER_RELEASE_SECONDS = 0.2


class _RefusedRequest(Exception):
    """A Pull stream's later request is invalid: the stream ends INVALID_ARGUMENT with
    these violations (raised in the settling task, aborted from the handler's own:
    an abort from the settling task could meet a write of the handler's and fail
    INTERNAL)."""

    def __init__(self, violations: list[Violation]) -> None:
        super().__init__("invalid pull request")
        self.violations = violations


def _request_violations(request: pb.PullRequest, first: bool, most: int) -> list[Violation]:
    """What is wrong with a Pull stream's request other than its settlements' own
    ids (those get a SettleResult each): a subscription past the first request, or
    more than `most` (Limits.max_batch_packets) settlements in one request, as
    Acknowledge, Nack and ExtendLeases refuse more than that per call. Checked
    before any id is parsed, so an oversized request costs nothing but its read."""
    violations: list[Violation] = []
    if request.HasField("subscription") and not first:
        violations.append(
            Violation("subscription", "ONLY_FIRST", "only the first request names it")
        )
    count = len(request.ack_ids) + len(request.nacks) + len(request.extend_ids)
    if count > most:
        for field in ("ack_ids", "nacks", "extend_ids"):
            if len(getattr(request, field)):
                violations.append(
                    Violation(
                        field,
                        "BATCH_TOO_LARGE",
                        f"at most {most} settlements per request (ack_ids, nacks and "
                        f"extend_ids together; this one holds {count}): send the rest in "
                        "the next request",
                    )
                )
    return violations


async def abort_no_group(context: grpc.aio.ServicerContext, topic: str, name: str) -> None:
    """Abort the call NOT_FOUND: there is no such group."""
    await context.abort(
        grpc.StatusCode.NOT_FOUND,
        f"no consumer group {name!r} on topic {topic!r} (CreateConsumerGroup first)",
    )


class PullLoop:
    """Runs Pull streams (see the module docstring)."""

    def __init__(
        self,
        store: GroupStore,
        delivery: Delivery,
        settler: Settler,
        limits: Limits,
        *,
        clock: StoreClock,
    ) -> None:
        self._store = store
        self._delivery = delivery
        self._settler = settler
        self._limits = limits
        self._clock = clock

    async def run(
        self,
        stream: PullStream,
        requests: AsyncIterator[pb.PullRequest],
        first: pb.PullRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncGenerator[bytes, None]:
        """The stream's responses (PullResponse bytes) until the consumer half-closes
        or goes; raises what its store calls raise (the caller maps them)."""
        settler = asyncio.create_task(self._settle_from(requests, first, stream, context))
        waiter: asyncio.Task[None] | None = None
        # The log's newest entry at the last pull: the wait is for entries after it.
        newest: str | None = None
        # Whether the log may hold entries for this stream that its last pull did
        # not lease. False once a pull leased the log's newest entry (or found
        # nothing): then only a new entry (the waiter), freed room or the next
        # look for run-out leases calls for another pull, and a wake for a
        # settlement alone sends its confirmation without one (issue 16: at low
        # load that was three pulls per packet that found nothing).
        unread = True
        try:
            while not caller_gone(context):
                if settler.done():
                    # The consumer half-closed (or settling failed: this
                    # raises): confirm what it settled, deliver nothing more.
                    refused = settler.exception()
                    if isinstance(refused, _RefusedRequest):
                        await _status.abort_invalid(
                            context, "invalid pull request", refused.violations
                        )
                    settler.result()
                    if stream.outbox:
                        yield _pull_wire.pull_response([], [a.wire() for a in stream.outbox])
                    return
                room = stream.room(self._clock.now_ms())
                paused = time.monotonic() < stream.pull_after
                deliveries: list[bytes] = []
                if not room or paused:
                    # Entries may come while it is full (or paused after a
                    # release): look once there is room.
                    unread = True
                elif unread or time.monotonic() >= stream.scan_at:
                    pulled = await self._store.pull(
                        stream.topic,
                        stream.group,
                        stream.consumer,
                        room,
                        max_bytes=stream.byte_room(self._limits.reply_budget_bytes),
                        scan=time.monotonic() >= stream.scan_at,
                    )
                    if pulled is None:
                        await abort_no_group(context, stream.topic, stream.group)
                        return
                    if pulled.scanned:
                        stream.scan_at = time.monotonic() + _RESCAN_SECONDS
                    newest = pulled.newest
                    # Leasing the log's newest entry means the group has read all
                    # of it; anything later wakes the waiter, which reads after
                    # `newest`. Entries left behind (the count or byte budget
                    # ran out, or only skipped entries at the end) call for
                    # another pull, as does one that leased nothing new to learn.
                    unread = bool(pulled.entries) and all(
                        e.cursor != newest for e in pulled.entries
                    )
                    deliveries = await self._delivery.deliver(stream, pulled.entries, pulled.now_ms)
                if deliveries or stream.outbox:
                    settled, stream.outbox = stream.outbox, []
                    # Leased within the byte budget already; their hops (or
                    # many settlements) can still tip a reply over it: then it
                    # goes as several.
                    items = [(True, d) for d in deliveries]
                    items += [(False, a.wire()) for a in settled]
                    for part in packs(items, lambda i: len(i[1]), self._limits.reply_budget_bytes):
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
                if room and newest is not None and not paused:
                    if waiter is None or waiter.done():
                        waiter = asyncio.create_task(
                            self._store.wait_for_entries(stream.topic, newest, _WAIT_MS)
                        )
                        # It may fail after the stream's last look at it.
                        waiter.add_done_callback(retrieve_outcome)
                    waits.add(waiter)  # type: ignore[arg-type]
                waits.add(settler)  # type: ignore[arg-type]
                # Paused after a release: no wait for new entries (one already
                # there would answer at once, again and again); wake to pull.
                timeout = _WAIT_MS / 1000
                if paused:
                    timeout = max(0.0, min(timeout, stream.pull_after - time.monotonic()))
                try:
                    done, _ = await asyncio.wait(
                        waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    # Also when the stream ends meanwhile (cancelled): a wait
                    # left pending would be destroyed pending.
                    woken.cancel()
                if not done or waiter is None or waiter.done():
                    # The wait ran out (the periodic look), or a new entry came
                    # (or the wait for one failed): pull. Only a settlement's
                    # wake, the waiter still blocked, leaves `unread` as it is.
                    unread = True
                if waiter is not None and waiter.done() and waiter.exception() is not None:
                    waiter = None  # a failed wait only delays the next look
        finally:
            settler.cancel()
            if waiter is not None:
                waiter.cancel()
            with contextlib.suppress(BaseException):
                await settler

    async def _settle_from(
        self,
        requests: AsyncIterator[pb.PullRequest],
        first: pb.PullRequest,
        stream: PullStream,
        context: grpc.aio.ServicerContext,
    ) -> None:
        """Settle what the consumer sends on its stream, until it half-closes (then the
        stream ends once those settlements are confirmed)."""
        request: pb.PullRequest | None = first
        while True:
            if request is not None:
                violations = _request_violations(
                    request, request is first, self._limits.max_batch_packets
                )
                if violations:
                    raise _RefusedRequest(violations)
                parsed = [
                    *(held_request(Kind.ACK, i, stream.held) for i in request.ack_ids),
                    *(nacked(n) for n in request.nacks),
                    *(parse_request(Kind.EXTEND, i) for i in request.extend_ids),
                ]
                if parsed:
                    results = await self._settler.settle(
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
                        if p.kind is Kind.RELEASE and r.code == code_pb2.OK:
                            stream.pull_after = time.monotonic() + _AFTER_RELEASE_SECONDS
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
