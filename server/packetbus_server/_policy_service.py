"""Governance at dispatch (Governor) and the PolicyService RPCs (approval queue, stats)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from packetbus import _custody, _wire
from packetbus.v1 import custody_pb2, packet_service_pb2, policy_service_pb2_grpc
from packetbus.v1 import policy_service_pb2 as pb

from . import _status
from ._access import binding
from ._access.authorization import Authorization
from ._clock import StoreClock
from ._custodian import ChainEnd, Custodian, Hop, chain_end
from ._ingest import Accepted, to_write
from ._key_store import KeyStore
from ._limits import Limits
from ._observability import counting, metrics
from ._packet_service import PacketService, fill_receipt, storage_errors, stored_packet
from ._packing import stored_size
from ._page_tokens import seal, unseal
from ._paging import page_across, page_request
from ._policy import Verdict
from ._policy_store import Decided, DecisionWrite, HeldRecord, PolicyStore
from ._policy_watch import PolicyWatch
from ._store import PacketStore
from ._validation import Violation, validate_topic, validate_tracking_id

POLICY_REJECTED = "POLICY_REJECTED"
ERROR_DOMAIN = _status.ERROR_DOMAIN
_VERDICTS = {
    Verdict.ALLOW: pb.POLICY_VERDICT_ALLOW,
    Verdict.REJECT: pb.POLICY_VERDICT_REJECT,
    Verdict.HOLD: pb.POLICY_VERDICT_HOLD,
}


def _held_size(record: HeldRecord) -> int:
    """About how many bytes a held record takes as a HeldPacket."""
    return (
        stored_size(len(record.stored), record.content_length)
        + len(record.topic)
        + len(record.rule_id)
        + len(record.reason)
        + len(record.version)
    )


def rejection(decided: Decided) -> status_pb2.Status:
    """A rejected packet's result: PERMISSION_DENIED, the rule in an ErrorInfo detail."""
    info = error_details_pb2.ErrorInfo(
        reason=POLICY_REJECTED,
        domain=ERROR_DOMAIN,
        metadata={
            "rule_id": decided.rule_id,
            "rule_reason": decided.reason,
            "policy_version": decided.version,
            "carcel_entry_id": decided.id,
        },
    )
    packed = any_pb2.Any()
    packed.Pack(info)
    rule = f"rule {decided.rule_id!r}" if decided.rule_id else "a rule"
    return status_pb2.Status(
        code=code_pb2.PERMISSION_DENIED,
        message=f"rejected by policy {rule}: {decided.reason}; in the carcel as {decided.id}",
        details=[packed],
    )


def fill_decided(result: packet_service_pb2.DispatchResult, topic: str, decided: Decided) -> None:
    if decided.status == "rejected":
        result.error.CopyFrom(rejection(decided))
    elif decided.status == "held":
        result.held.rule_id = decided.rule_id
        result.held.reason = decided.reason
        result.held.policy_version = decided.version
    elif decided.status == "stored":
        fill_receipt(result.receipt, topic, decided.id, decided.expiry_ms)
    else:
        result.error.CopyFrom(
            _status.status(
                code_pb2.ALREADY_EXISTS,
                f"tracking_id {result.tracking_id} is already used by a different packet",
            )
        )


def count_decided(outcomes: Sequence[Decided]) -> None:
    """Count what the policy's decisions came to: rejected (POLICY_REJECTED) and held
    by rule; a packet stored before the rule (a resend) as deduplicated; a tracking
    id another packet holds as rejected (ALREADY_EXISTS)."""
    totals: dict[tuple[str, str], int] = {}
    for outcome in outcomes:
        key = (outcome.status, outcome.rule_id)
        totals[key] = totals.get(key, 0) + 1
    for (status, rule), n in totals.items():
        if status == "rejected":
            counting.rejected_as(POLICY_REJECTED, n, rule)
        elif status == "held":
            metrics.packets_held.labels(rule).inc(n)
        elif status == "stored":
            counting.deduplicated(n)
        else:
            counting.rejected_as("ALREADY_EXISTS", n)


def authorization_message(authorization: Authorization) -> pb.AuthorizationPolicy:
    """The `[authorization]` section as written, for GetPolicy."""
    return pb.AuthorizationPolicy(
        principals=[
            pb.AuthorizationPrincipal(
                match=entry.match, roles=entry.roles, agent_id=entry.agent_id or ""
            )
            for entry in authorization.principals
        ],
        roles=[
            pb.AuthorizationRole(
                name=role.name,
                grants=[
                    pb.AuthorizationGrant(permissions=g.permissions, resources=g.resources)
                    for g in role.grants
                ],
            )
            for role in authorization.roles.values()
        ],
    )


class Governor:
    """Judges accepted packets by the policy in force, before they are sealed and stored."""

    def __init__(self, watch: PolicyWatch, store: PolicyStore, custodian: Custodian) -> None:
        self.watch = watch
        self.store = store
        self._custodian = custodian

    @property
    def custodian(self) -> Custodian:
        """Who seals a decided packet's chain (also for posts judged outside Dispatch)."""
        return self._custodian

    async def judge(
        self,
        accepted: list[tuple[int, Accepted]],
        results: Sequence[packet_service_pb2.DispatchResult],
        now_ns: int,
        context: grpc.aio.ServicerContext,
    ) -> list[tuple[int, Accepted]]:
        """Record the packets the policy rejects or holds (their results filled); the rest."""
        policy = self.watch.policy
        if policy is None:
            return accepted
        allowed: list[tuple[int, Accepted]] = []
        decided = []
        for i, a in accepted:
            decision = policy.evaluate(a.packet)
            if decision is None:
                allowed.append((i, a))
            else:
                decided.append((i, a, decision))
        if not decided:
            return allowed
        chains = self._custodian.seal_decided(
            [
                (
                    a.packet,
                    a.content,
                    _custody.REJECTED if d.verdict is Verdict.REJECT else _custody.HELD,
                    f"policy rule {d.rule_id}: {d.reason}",
                )
                for _, a, d in decided
            ],
            now_ns,
        )
        writes = [
            DecisionWrite(to_write(a, chain), d.verdict, d.rule_id, d.reason)
            for (_, a, d), chain in zip(decided, chains, strict=True)
        ]
        async with storage_errors(context):
            outcomes = await self.store.decide(
                writes, policy.version, time_remaining=context.time_remaining()
            )
        for (i, a, _), outcome in zip(decided, outcomes, strict=True):
            results[i].tracking_id = a.packet.tracking_id
            fill_decided(results[i], a.packet.topic, outcome)
        count_decided(outcomes)
        return allowed

    async def report(
        self,
        results: Sequence[packet_service_pb2.DispatchResult],
        earlier: Sequence[tuple[int, str, str]],
        context: grpc.aio.ServicerContext,
    ) -> None:
        """Fill the results of packets (index, topic, tracking id) that a policy decided
        about in an earlier dispatch: a retry answers what that dispatch answered."""
        for i, topic, tracking_id in earlier:
            async with storage_errors(context):
                decided = await self.store.lookup(topic, tracking_id)
            if decided is None:  # expired between the two reads: as good as never stored
                results[i].error.CopyFrom(
                    _status.status(code_pb2.UNAVAILABLE, "the packet's record changed; retry")
                )
            else:
                fill_decided(results[i], topic, decided)


class PolicyService(policy_service_pb2_grpc.PolicyServiceServicer):
    def __init__(
        self,
        governor: Governor,
        packets: PacketStore,
        packet_service: PacketService,
        key_store: KeyStore,
        custodian: Custodian,
        limits: Limits,
        *,
        clock: StoreClock,
    ) -> None:
        self._governor = governor
        # The store's clock: times are judged and stamped by it, as every replica does.
        self._clock = clock
        self._store = governor.store
        self._watch = governor.watch
        self._packets = packets
        self._packet_service = packet_service
        self._key_store = key_store
        self._custodian = custodian
        self._limits = limits

    async def GetPolicy(
        self, request: pb.GetPolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetPolicyResponse:
        watch = self._watch
        response = pb.GetPolicyResponse(path=str(watch.path) if watch.path else "")
        policy = watch.policy
        if policy is not None:
            response.loaded = True
            response.version = policy.version
            response.loaded_at.FromMilliseconds(watch.loaded_at_ms)
            response.default_verdict = _VERDICTS[policy.default]
            response.approvers.extend(policy.approvers)
            response.rules.extend(
                pb.PolicyRule(id=r.id, verdict=_VERDICTS[r.verdict], reason=r.reason)
                for r in policy.rules
            )
            if policy.authorization is not None:
                response.authorization.CopyFrom(authorization_message(policy.authorization))
        if watch.failure is not None:
            response.load_error = watch.failure.message
            response.load_error_at.FromMilliseconds(watch.failure.at_ms)
        return response

    def _held_message(self, record: HeldRecord) -> pb.HeldPacket:
        stored = stored_packet(
            record.topic,
            "",
            record.expires_at_ms,
            record.stored,
            record.content_length,
            stored_at_ms=record.held_at_ms,
        )
        self._packet_service.attach_head(stored)
        held = pb.HeldPacket(
            topic=record.topic,
            rule_id=record.rule_id,
            reason=record.reason,
            policy_version=record.version,
            packet=stored,
        )
        held.held_at.FromMilliseconds(record.held_at_ms)
        return held

    async def ListHeldPackets(
        self, request: pb.ListHeldPacketsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListHeldPacketsResponse:
        violations: list[Violation] = []
        if request.topic:
            validate_topic(violations, "topic", request.topic, self._limits.max_topic_length)
        scope = (request.topic,)
        token = unseal(violations, "held", scope, request.page_token)
        page = page_request(violations, request.page_size, token, request.topic)
        if violations:
            await _status.abort_invalid(context, "invalid listing", violations)
        now_ms = self._clock.now_ms()
        async with storage_errors(context):
            topics = [request.topic] if request.topic else sorted(await self._packets.topics())
            records, token = await page_across(
                topics,
                page,
                self._store.held_page,
                lambda r: r.expires_at_ms > now_ms,
                _held_size,
                self._limits.reply_budget_bytes,
            )
        return pb.ListHeldPacketsResponse(
            packets=[self._held_message(r) for r in records],
            next_page_token=seal("held", scope, token),
        )

    def _check_target(self, topic: str, tracking_id: str) -> list[Violation]:
        violations: list[Violation] = []
        validate_topic(violations, "topic", topic, self._limits.max_topic_length)
        violations += validate_tracking_id(tracking_id)
        return violations

    async def _find_held(
        self, context: grpc.aio.ServicerContext, topic: str, tracking_id: str
    ) -> tuple[Decided | None, HeldRecord | None]:
        async with storage_errors(context):
            decided = await self._store.lookup(topic, tracking_id)
            if decided is None or decided.status != "held":
                return decided, None
            record = await self._store.held_entry(topic, decided.id)
        if record is not None and record.expires_at_ms <= self._clock.now_ms():
            record = None
        return decided, record

    async def GetHeldPacket(
        self, request: pb.GetHeldPacketRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetHeldPacketResponse:
        violations = self._check_target(request.topic, request.tracking_id)
        if violations:
            await _status.abort_invalid(context, "invalid held packet", violations)
        _, record = await self._find_held(context, request.topic, request.tracking_id)
        if record is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"packet {request.tracking_id} is not held on topic {request.topic!r}",
            )
            raise AssertionError("context.abort always raises")
        return pb.GetHeldPacketResponse(packet=self._held_message(record))

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
        violations = self._check_target(request.topic, request.tracking_id)
        if violations:
            await _status.abort_invalid(context, f"invalid {action} request", violations)
        decided, record = await self._find_held(context, request.topic, request.tracking_id)
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

    async def ApprovePacket(
        self, request: pb.ApprovePacketRequest, context: grpc.aio.ServicerContext
    ) -> pb.ApprovePacketResponse:
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
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{what} is in the carcel (entry {values[0]}): denied or rejected, not held",
            )
        if status == "stored":
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"{what} was approved: it is stored"
            )
        if status == "moved":
            await context.abort(
                grpc.StatusCode.ABORTED, f"{what} is held again under another entry; sign again"
            )
        if status == "taken":
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"tracking_id {request.tracking_id} is already used on topic {values[0]!r}",
            )
        await context.abort(
            grpc.StatusCode.NOT_FOUND, f"{what} is not held (never held, or it expired)"
        )
        raise AssertionError("context.abort always raises")

    async def DenyPacket(
        self, request: pb.DenyPacketRequest, context: grpc.aio.ServicerContext
    ) -> pb.DenyPacketResponse:
        decided, record, signed = await self._verified_decision(
            context, request, request.denial, "denial", _custody.DENIED
        )
        if record is None or signed is None:
            if decided is not None and decided.status == "rejected":
                # Denied before (a replay), or rejected outright: either way in the carcel.
                return pb.DenyPacketResponse(carcel_entry_id=decided.id)
            await self._approve_failed(
                context,
                request,
                "stored" if decided is not None else "gone",
                [decided.id if decided else ""],
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

    async def GetPolicyStats(
        self, request: pb.GetPolicyStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetPolicyStatsResponse:
        if request.topic:
            violations: list[Violation] = []
            validate_topic(violations, "topic", request.topic, self._limits.max_topic_length)
            if violations:
                await _status.abort_invalid(context, "invalid stats request", violations)
        async with storage_errors(context):
            topics = [request.topic] if request.topic else await self._packets.topics()
            totals = await self._store.stats(topics)
        response = pb.GetPolicyStatsResponse()
        response.by_rule.update(totals["rule"])
        response.by_reason.update(totals["reason"])
        response.by_decision.update(totals["decision"])
        return response
