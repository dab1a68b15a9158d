"""Settling a consumer group's deliveries: parsing what a consumer asks, signing the
hops (acked, nacked, released, carceled), and one settle script call per round.

Used by a Pull stream (its settlements arrive on the stream: `_group_pull`) and by
the unary Acknowledge, Nack and ExtendLeases calls (`_group_service`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import grpc
from google.rpc import code_pb2

from packetbus import _custody

from ._clock import StoreClock
from ._cursors import cursor_millis
from ._custodian import ChainEnd, Custodian, Hop, chain_end
from ._group_store import GroupSettings, GroupStore, Kind, Outcome, Settle, Settled
from ._hop_store import HopStore
from ._observability import counting, tracing
from ._settle_requests import (
    SETTLEMENT,
    Answer,
    Held,
    Request,
    deliveries_made,
    invalid,
    refused,
)
from ._violation import Violation

log = logging.getLogger("packetbus.server.groups")

MAX_DELIVERY = "max delivery attempts"
# Signing again after another hop got in first: a few rounds settle any race.
SIGN_ROUNDS = 5


_ACTION = {
    Kind.ACK: _custody.ACKED,
    Kind.NACK: _custody.NACKED,
    Kind.RELEASE: _custody.RELEASED,
    Kind.CARCEL: _custody.CARCELED,
}


class Settler:
    """Settles requests for deliveries of a group (see the module docstring)."""

    def __init__(
        self, store: GroupStore, hops: HopStore, custodian: Custodian, *, clock: StoreClock
    ) -> None:
        self._store = store
        self._hops = hops
        self._custodian = custodian
        self._clock = clock

    async def settle(
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
            if r.problem is not None:
                results[i] = invalid(r, r.problem)
            elif r.kind is Kind.NACK and r.delay_ms > deadline_ms:
                results[i] = invalid(
                    r,
                    Violation(
                        "delay_seconds",
                        "RANGE",
                        f"delay_seconds must be at most the ack deadline ({deadline_ms // 1000})",
                    ),
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
                    results[i] = refused(
                        requests[i],
                        code_pb2.NOT_FOUND,
                        f"{requests[i].delivery_id} is not outstanding: its packet is gone "
                        "from the topic",
                        "PACKET_GONE",
                    )
            valid = [i for i in valid if requests[i].delivery_id in known]

        todo = valid
        for _ in range(SIGN_ROUNDS):
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
                        attempt=deliveries_made(requests[i]),
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
                        deliveries=deliveries_made(r),
                        expires_at_ms=h.expires_at_ms,
                    )
                )
            settled = await self._store.settle(topic, group, items)
            if settled is None:
                for i in todo:
                    results[i] = refused(
                        requests[i],
                        code_pb2.NOT_FOUND,
                        f"no consumer group {group!r} on topic {topic!r} any more",
                        "GROUP_GONE",
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
        return Answer(r.delivery_id, SETTLEMENT[r.kind], code, message)

    def _settled(self, r: Request, kind: Kind, outcome: Settled) -> Answer:
        if outcome.outcome is Outcome.OK:
            result = self._result(r, code_pb2.OK)
            if kind is Kind.EXTEND:
                result.lease_ends_ms = int(outcome.value)
            elif kind is Kind.CARCEL:
                result.carcel_id = outcome.value
            return result
        if outcome.outcome is Outcome.LOST:
            return refused(
                r,
                code_pb2.FAILED_PRECONDITION,
                f"the lease of {r.delivery_id} ran out: the packet was delivered again "
                f"(delivery {outcome.value})",
                "LEASE_RAN_OUT",
            )
        last = outcome.value
        if last == f"{r.cursor}:{r.count} {kind.value}":
            # This very settlement, replayed (a retry after a lost reply).
            return self._result(r, code_pb2.OK)
        detail = f" (last settled: {last})" if last else ""
        if last.startswith(f"{r.cursor}:") and last.endswith(" carcel"):
            return refused(
                r,
                code_pb2.FAILED_PRECONDITION,
                f"{r.delivery_id} is not outstanding: the packet was moved to the carcel",
                "CARCELED",
            )
        return refused(
            r, code_pb2.NOT_FOUND, f"{r.delivery_id} is not outstanding{detail}", "NOT_OUTSTANDING"
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
