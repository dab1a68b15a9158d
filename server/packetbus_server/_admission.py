"""One packet taken in outside Dispatch (a task, a finding): the same checks and seal."""

from __future__ import annotations

import time
from collections.abc import Sequence

import grpc

from packetbus.v1 import packet_pb2

from . import _status
from ._custodian import Custodian, check_origin
from ._ingest import Accepted, Rejected, accept, to_write
from ._key_store import KeyStore
from ._limits import Limits
from ._packet_service import storage_errors
from ._store import PacketWrite
from ._validation import Violation


def nested(violations: Sequence[Violation], prefix: str) -> list[Violation]:
    """`violations` of a packet inside a request, their paths under `prefix`."""
    return [
        Violation(f"{prefix}.{v.field}" if v.field else prefix, v.rule, v.description)
        for v in violations
    ]


async def seal_one(
    context: grpc.aio.ServicerContext,
    packet: packet_pb2.Packet,
    accepted: Accepted,
    *,
    key_store: KeyStore,
    custodian: Custodian,
    now_ns: int,
) -> PacketWrite:
    """What to store for an accepted packet: a signed ("1.1") origin checked (the RPC
    fails when it does not hold, as in Dispatch), then the server's entries sealed on."""
    if packet.chain_of_custody:
        async with storage_errors(context):
            keys = await key_store.get_many([packet.chain_of_custody[0].key_id])
        problem = check_origin(packet, accepted.content, keys)
        if problem is not None:
            await context.abort(problem.code, problem.message)
    [chain] = custodian.seal([(packet, accepted.content)], now_ns)
    return to_write(accepted, chain)


async def admit(
    context: grpc.aio.ServicerContext,
    packet: packet_pb2.Packet,
    violations: Sequence[Violation],
    *,
    what: str,
    limits: Limits,
    key_store: KeyStore,
    custodian: Custodian,
) -> tuple[PacketWrite, int]:
    """Validate `packet` (inside a request, at path "packet") with the request's own
    `violations`, failing the RPC with all of them; then seal it. Returns what to
    store and the time it was taken in (ns)."""
    now_ns = time.time_ns()
    outcome = accept(packet, limits, now_ns)
    found = list(violations)
    if isinstance(outcome, Rejected):
        found += nested(outcome.violations, "packet")
    if found or isinstance(outcome, Rejected):
        await _status.abort_invalid(context, f"invalid {what}", found)
        raise AssertionError("abort_invalid always raises")
    write = await seal_one(
        context, packet, outcome, key_store=key_store, custodian=custodian, now_ns=now_ns
    )
    return write, now_ns
