"""The approval queue's writes: a held packet found, the approver's signed custody
entry verified against its chain (key registered to an agent, the policy's
approvers, the caller may act as that agent), then approved (stored, with the
server's dispatched hop) or denied (to the carcel) by one script (_policy_store).

A request repeated after its packet left the queue answers from the record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import grpc

from packetbus import _custody, _wire
from packetbus.v1 import custody_pb2
from packetbus.v1 import policy_service_pb2 as pb

from . import _status
from ._access import binding
from ._clock import StoreClock
from ._custodian import ChainEnd, Custodian, Hop, chain_end
from ._field_rules import validate_topic, validate_tracking_id
from ._key_store import KeyStore
from ._limits import Limits
from ._policy_store import Decided, HeldRecord, PolicyStore
from ._policy_watch import PolicyWatch
from ._storage_errors import storage_errors
from ._stored_packets import fill_receipt
from ._validation import Violation


class Approvals:
    """Finds held packets and approves or denies them (PolicyService's writes)."""

    def __init__(
        self,
        store: PolicyStore,
        watch: PolicyWatch,
        key_store: KeyStore,
        custodian: Custodian,
        limits: Limits,
        *,
        clock: StoreClock,
    ) -> None:
        self._store = store
        self._watch = watch
        self._key_store = key_store
        self._custodian = custodian
        self._limits = limits
        # The store's clock: times are judged and stamped by it, as every replica does.
        self._clock = clock

    def check_target(self, topic: str, tracking_id: str) -> list[Violation]:
        """What is wrong with a request's topic and tracking id (a held packet's address)."""
        violations: list[Violation] = []
        validate_topic(violations, "topic", topic, self._limits.max_topic_length)
        violations += validate_tracking_id(tracking_id)
        return violations

    async def find_held(
        self, context: grpc.aio.ServicerContext, topic: str, tracking_id: str
    ) -> tuple[Decided | None, HeldRecord | None]:
        """The policy's decision about the packet (None: none) and, while it is held and
        not expired, its held record (else None)."""
        async with storage_errors(context):
            decided = await self._store.lookup(topic, tracking_id)
            if decided is None or decided.status != "held":
                return decided, None
            record = await self._store.held_entry(topic, decided.id)
            if record is None:
                # Decided between the two reads (another call approved or denied it:
                # one script moves the entry and the record together), so the record
                # read again says how; a caller answered by the first read would be
                # told "not held" of a packet approved, or "approved" of one denied.
                decided = await self._store.lookup(topic, tracking_id)
                if decided is None or decided.status != "held":
                    return decided, None
        if record is not None and record.expires_at_ms <= self._clock.now_ms():
            record = None
        return decided, record

    async def _verified_decision(
        self,
        context: grpc.aio.ServicerContext,
        request: pb.ApprovePacketRequest | pb.DenyPacketRequest,
        entry: custody_pb2.CustodyEntry,
        field: str,
        action: str,
    ) -> tuple[Decided | None, HeldRecord | None, custody_pb2.CustodyRecord | None]:
        """Check the request, find the held packet and verify the agent's signed entry on
        its chain; the RPC fails with why not. (None, None, None): not held; the caller
        answers from the record (a replay)."""
        violations = self.check_target(request.topic, request.tracking_id)
        if violations:
            await _status.abort_invalid(context, f"invalid {action} request", violations)
        decided, record = await self.find_held(context, request.topic, request.tracking_id)
        if record is None:
            # Not held (anymore): answered from the record, entry or not, so a client
            # that lost the answer and can no longer sign after the chain can ask again.
            return decided, None, None
        if not entry.record or not entry.signature or not entry.key_id:
            await _status.abort_invalid(
                context,
                f"invalid {action} request",
                [
                    Violation(
                        field,
                        "REQUIRED",
                        f"the {action!r} custody entry, signed with the agent's registered key",
                    )
                ],
            )
        async with storage_errors(context):
            keys = await self._key_store.get_many([entry.key_id])
        key = keys.get(entry.key_id)
        if key is None or key.owner_kind != custody_pb2.KEY_OWNER_KIND_AGENT:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"key {entry.key_id} is not registered to any agent; register it first "
                "(CustodyService.RegisterAgentKey)",
            )
        end = chain_end(record.stored, record.content_length, [])
        content = record.stored[: record.content_length]
        report = _custody.verify_entry(
            end.sequence,
            entry,
            tracking_id=request.tracking_id,
            content_digest=hashlib.sha256(content).digest(),
            previous_hash=end.last_hash,
            keys=keys,
        )
        if report.verdict in (
            custody_pb2.CUSTODY_VERDICT_OUT_OF_ORDER,
            custody_pb2.CUSTODY_VERDICT_BROKEN_LINK,
        ):
            await context.abort(
                grpc.StatusCode.ABORTED,
                f"the {action} entry does not continue the held packet's chain "
                f"({report.detail}); fetch it again (GetHeldPacket) and sign after its last entry",
            )
        if report.verdict == custody_pb2.CUSTODY_VERDICT_ACTOR_MISMATCH:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, report.detail)
        if not report.ok:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"the {action} entry does not authenticate: {report.detail}",
            )
        if report.action != action:
            await _status.abort_invalid(
                context,
                f"invalid {action} request",
                [Violation(field, "ACTION", f"the entry's action must be {action!r}")],
            )
        policy = self._watch.policy
        if policy is not None and not policy.may_approve(report.actor):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"agent {report.actor!r} is not among the policy's approvers "
                f"{list(policy.approvers)}",
            )
        # The gate checked packets.approve on the topic; the signing approver must also
        # be an agent the caller may act as (issue 14): holding an approver's key
        # registered under one's own principal does not make a caller that approver.
        await binding.require_acting(context, report.actor, "the approval's signing actor")
        return decided, record, custody_pb2.CustodyRecord.FromString(entry.record)

    async def approve(
        self, request: pb.ApprovePacketRequest, context: grpc.aio.ServicerContext
    ) -> pb.ApprovePacketResponse:
        """ApprovePacket: the held packet stored (its receipt), its chain extended by the
        approval and the server's dispatched hop. Fails the call as
        _verified_decision and _approve_failed say."""
        decided, record, signed = await self._verified_decision(
            context, request, request.approval, "approval", _custody.APPROVED
        )
        if record is None or signed is None:
            return await self._approve_replay(context, request, decided)
        end = chain_end(record.stored, record.content_length, [])
        approval = request.approval.SerializeToString()
        after = ChainEnd(end.ingest_entries + 1, 0, _custody.entry_hash(request.approval.record))
        content = record.stored[: record.content_length]
        hops = self._custodian.sign_hops(
            [
                Hop(
                    record.tracking_id,
                    hashlib.sha256(content).digest(),
                    after,
                    _custody.DISPATCHED,
                    counterpart=f"agent:{signed.actor}",
                )
            ],
            self._clock.now_ns(),
        )
        entries = [approval, *(h.entry for h in hops or ())]
        async with storage_errors(context):
            status, values = await self._store.approve(
                record, _wire.with_chain(record.stored, entries), signed.actor
            )
        if status in ("ok", "stored"):
            return self._receipt(request.topic, values[0], int(values[1]))
        return await self._approve_failed(context, request, status, values)

    def _receipt(self, topic: str, cursor: str, expiry_ms: int) -> pb.ApprovePacketResponse:
        response = pb.ApprovePacketResponse()
        fill_receipt(response.receipt, topic, cursor, expiry_ms)
        return response

    async def _approve_replay(
        self,
        context: grpc.aio.ServicerContext,
        request: pb.ApprovePacketRequest,
        decided: Decided | None,
    ) -> pb.ApprovePacketResponse:
        if decided is not None and decided.status == "stored":
            return self._receipt(request.topic, decided.id, decided.expiry_ms)
        status = "denied" if decided is not None and decided.status == "rejected" else "gone"
        return await self._approve_failed(context, request, status, [decided.id if decided else ""])

    async def _approve_failed(
        self,
        context: grpc.aio.ServicerContext,
        request: pb.ApprovePacketRequest | pb.DenyPacketRequest,
        status: str,
        values: Sequence[str],
    ) -> pb.ApprovePacketResponse:
        what = f"packet {request.tracking_id} on topic {request.topic!r}"
        if status == "denied":
            await _status.abort_with_reason(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{what} is in the carcel (entry {values[0]}): denied or rejected, not held",
                "PACKET_DENIED",
            )
        if status == "stored":
            await _status.abort_with_reason(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{what} was approved: it is stored",
                "PACKET_APPROVED",
            )
        if status == "moved":
            await context.abort(
                grpc.StatusCode.ABORTED, f"{what} is held again under another entry; sign again"
            )
        if status == "placed":
            await _status.abort_with_reason(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"tracking_id {request.tracking_id} is already used by a task, finding or record",
                "TRACKING_ID_IN_USE",
            )
        if status == "taken":
            await _status.abort_with_reason(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"tracking_id {request.tracking_id} is already used on topic {values[0]!r}",
                "TRACKING_ID_IN_USE",
            )
        await context.abort(
            grpc.StatusCode.NOT_FOUND, f"{what} is not held (never held, or it expired)"
        )
        raise AssertionError("context.abort always raises")

    async def deny(
        self, request: pb.DenyPacketRequest, context: grpc.aio.ServicerContext
    ) -> pb.DenyPacketResponse:
        """DenyPacket: the held packet moved to the carcel (its entry id), its chain
        extended by the denial. Fails the call as _verified_decision and
        _approve_failed say."""
        decided, record, signed = await self._verified_decision(
            context, request, request.denial, "denial", _custody.DENIED
        )
        if record is None or signed is None:
            if decided is not None and decided.status == "rejected":
                # Denied before (a replay), or rejected outright: either way in the carcel.
                return pb.DenyPacketResponse(carcel_entry_id=decided.id)
            # "stored" only when it was approved: a record still saying "held" here is
            # a held packet that expired, which is not held anymore (NOT_FOUND).
            stored = decided is not None and decided.status == "stored"
            await self._approve_failed(
                context, request, "stored" if stored else "gone", [decided.id if decided else ""]
            )
            raise AssertionError("unreachable")
        payload = _wire.with_chain(record.stored, [request.denial.SerializeToString()])
        async with storage_errors(context):
            status, values = await self._store.deny(
                record, payload, signed.actor, signed.reason or "denied"
            )
        if status in ("ok", "denied"):
            return pb.DenyPacketResponse(carcel_entry_id=values[0])
        await self._approve_failed(context, request, status, values)
        raise AssertionError("unreachable")
