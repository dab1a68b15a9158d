"""Delivering a Pull stream's leased entries: each one's "delivered" hop signed and
stored, or, past its last attempt, the packet moved to the carcel; and the stream's
own state (what it holds, for flow control and for the hops that follow).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from packetbus import _custody, _wire

from . import _pull_wire
from ._clock import StoreClock
from ._cursors import cursor_millis
from ._custodian import ChainEnd, Custodian, Hop, chain_end
from ._group_settling import MAX_DELIVERY, SIGN_ROUNDS, Settler
from ._group_store import GroupSettings, Kind, Leased
from ._hop_store import HopStore, HopWrite
from ._observability import counting, metrics, tracing
from ._settle_requests import Answer, Held, Request, delivery_id

log = logging.getLogger("packetbus.server.groups")


@dataclass
class PullStream:
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
    # No pull before this (time.monotonic()): set by a release, see _group_pull.
    pull_after: float = 0.0
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


class Delivery:
    """Delivers leased entries on Pull streams (see the module docstring)."""

    def __init__(
        self, hops: HopStore, custodian: Custodian, settler: Settler, *, clock: StoreClock
    ) -> None:
        self._hops = hops
        self._custodian = custodian
        self._settler = settler
        self._clock = clock

    async def deliver(
        self, stream: PullStream, entries: Sequence[Leased], now_ms: int
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
        for _ in range(SIGN_ROUNDS):
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

    async def _carcel_run_out(self, stream: PullStream, entries: Sequence[Leased]) -> None:
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
        results = await self._settler.settle(
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
