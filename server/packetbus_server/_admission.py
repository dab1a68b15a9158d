"""One packet taken in outside Dispatch (a task, a finding): the same checks and seal."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import grpc

from packetbus.v1 import packet_pb2

from . import _status
from ._access import binding
from ._clock import StoreClock
from ._custodian import Custodian, check_origin
from ._governance import judge_posted
from ._ingest import Accepted, Rejected, accept, to_write, with_request_fields
from ._key_store import KeyStore
from ._limits import Limits
from ._observability import counting
from ._packet_writes import PacketWrite
from ._storage_errors import storage_errors
from ._validation import Violation

if TYPE_CHECKING:
    from ._policy_service import Governor


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
            counting.rejected_as(problem.code.name)
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
    clock: StoreClock,
    governor: Governor | None = None,
    request_fields: Sequence[str] = (),
    check_write: Callable[[PacketWrite], Awaitable[None]] | None = None,
) -> tuple[PacketWrite, int]:
    """Validate `packet` (inside a request, at path "packet") with the request's own
    `violations`, failing the RPC with all of them (INVALID_ARGUMENT); refuse an
    origin the caller may not act as (PERMISSION_DENIED); seal it; await
    `check_write` on the sealed write (a check of its stored form, which fails the
    RPC itself); then have the `governor`'s policy judge it (_governance.judge_posted:
    a refusal fails the RPC, nothing stored but a rejection's carcel entry). Returns
    what to store, its fingerprint covering `request_fields` (see
    with_request_fields), and the time it was taken in (unix ns, by the store's
    `clock`)."""
    now_ns = clock.now_ns()
    outcome = accept(packet, limits, now_ns)
    found = list(violations)
    if isinstance(outcome, Rejected):
        found += nested(outcome.violations, "packet")
    if found or isinstance(outcome, Rejected):
        counting.rejected_as("INVALID_ARGUMENT")
        await _status.abort_invalid(context, f"invalid {what}", found)
        raise AssertionError("abort_invalid always raises")
    # Its origin the caller's own agent id, or one it may act for (issue 14 item 4),
    # before its key is looked up, it is governed or anything is stored.
    refusal = binding.acting_refusal(packet.origin, "packet.origin")
    if refusal is not None:
        counting.rejected([refusal])
        await _status.abort_with(context, refusal)
    write = await seal_one(
        context, packet, outcome, key_store=key_store, custodian=custodian, now_ns=now_ns
    )
    if request_fields:
        write = with_request_fields(write, *request_fields)
    # Sealed before it is judged (Dispatch judges first): a bad request is
    # INVALID_ARGUMENT whatever the policy says, never a carcel entry, and some
    # checks need the stored form. Sealing writes nothing.
    if check_write is not None:
        await check_write(write)
    if governor is not None:
        await judge_posted(context, governor, outcome, write.fingerprint, now_ns, what=what)
    return write, now_ns
