"""Subscribe's stream once admitted: where a subscription starts (a cursor, the
oldest kept, or now), the loop that follows the topic's log with its gaps, and the
packing of what it reads into replies of about one reply budget each.

Apart from PacketService (_packet_service), which checks the request and admits the
stream, so that the servicer reads as its RPCs and the follow loop as one piece.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import grpc

from packetbus.v1 import packet_pb2, packet_service_pb2

from . import _subscribe_wire as _wire
from ._clock import StoreClock
from ._gaps import Follower
from ._limits import Limits
from ._log_pages import LogEntry
from ._observability import metrics, tracing
from ._packing import packs
from ._store import PacketStore
from ._stored_packets import entry_size
from ._stream_ends import caller_gone, stream_started

# How long one blocking read waits before looking again; bounds how long a
# cancelled subscription holds its Redis connection.
_SUBSCRIBE_BLOCK_MS = 1000


def _responses(
    topic: str,
    gap: packet_service_pb2.SubscriptionGap | None,
    entries: list[LogEntry],
    budget: int,
) -> Iterator[tuple[bytes, list[LogEntry]]]:
    """The gap (if any) and `entries`, as serialized responses of at most `budget`
    bytes each (one packet larger than that alone), each with the entries it carries;
    the gap goes with the first."""
    for part in packs(entries, entry_size, budget) if entries else [[]]:
        yield _wire.subscribe_response([_wire.stored_packet(topic, e) for e in part], gap), part
        gap = None


def _carried(entries: list[LogEntry]) -> list[tracing.Carried]:
    # Only with tracing on: the content is parsed for its tracking id and trace context.
    return [
        tracing.carried(packet_pb2.Packet.FromString(e.payload[: e.content_length]))
        for e in entries
    ]


async def follow_topic(
    store: PacketStore,
    clock: StoreClock,
    limits: Limits,
    request: packet_service_pb2.SubscribeRequest,
    batch: int,
    context: grpc.aio.ServicerContext,
) -> AsyncIterator[bytes]:
    """Subscribe's stream once admitted: from where `request` starts, its topic's packets
    and gaps in replies of `batch` packets at most, waiting for more at the log's end,
    until the caller goes. Each reply is a serialized SubscribeResponse (_subscribe_wire)."""
    topic = request.topic
    started_ms = clock.now_ms()
    resumed = request.WhichOneof("start") == "after_cursor"
    if resumed:
        cursor = request.after_cursor
    elif request.start_position == packet_service_pb2.START_POSITION_EARLIEST:
        cursor = "0-0"
    else:
        cursor = await store.last_cursor(topic)
    follower = Follower(cursor, resumed=resumed, started_ms=started_ms)
    delivered = metrics.packets_delivered.labels("subscribe")
    latest = not resumed and request.start_position != packet_service_pb2.START_POSITION_EARLIEST
    await stream_started(context, cursor if latest else None)
    # About one reply's worth per read: large packets are read a few at a time,
    # so a subscriber holds about `budget` bytes, not `batch` packets of up to a
    # megabyte each.
    budget = limits.reply_budget_bytes
    while not caller_gone(context):
        page = await store.follow(topic, follower.cursor, count=batch, max_bytes=budget)
        for gap, entries in follower.take(page, clock.now_ms()):
            if entries:
                delivered.inc(len(entries))
            # The write waits for HTTP/2 flow control, so a slow reader
            # holds at most one read here: it is paced, the server is not.
            for response, sent in _responses(topic, gap, entries, budget):
                if tracing.active is not None:
                    tracing.active.batch(context, ("receive", "deliver"), topic, _carried(sent))
                yield response
        if page.complete:
            await store.wait_after(topic, follower.cursor, block_ms=_SUBSCRIBE_BLOCK_MS)
