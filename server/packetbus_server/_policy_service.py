"""Governance at dispatch (Governor) and the PolicyService RPCs (approval queue, stats).

The Governor judges each accepted packet by the policy in force (_policy) and records
what it rejects or holds (_policy_store); the results say so as _policy_decisions
builds them. The servicer delegates approvals and denials to _policy_approvals and
its replies to _policy_replies.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.rpc import code_pb2

from packetbus import _custody
from packetbus.v1 import packet_service_pb2, policy_service_pb2_grpc
from packetbus.v1 import policy_service_pb2 as pb

from . import _status
from ._clock import StoreClock
from ._custodian import Custodian
from ._field_rules import validate_topic
from ._ingest import Accepted, to_write
from ._key_store import KeyStore
from ._limits import Limits
from ._packet_service import PacketService
from ._page_tokens import seal, unseal
from ._paging import page_across, page_request
from ._policy import Verdict
from ._policy_approvals import Approvals
from ._policy_decisions import count_decided, fill_decided
from ._policy_replies import held_message, held_size, policy_response
from ._policy_store import DecisionWrite, PolicyStore
from ._policy_watch import PolicyWatch
from ._storage_errors import storage_errors
from ._store import PacketStore
from ._validation import Violation


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
        self._limits = limits
        self._approvals = Approvals(
            governor.store, governor.watch, key_store, custodian, limits, clock=clock
        )

    async def GetPolicy(
        self, request: pb.GetPolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetPolicyResponse:
        return policy_response(self._watch)

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
                held_size,
                self._limits.reply_budget_bytes,
            )
        return pb.ListHeldPacketsResponse(
            packets=[held_message(r, self._packet_service) for r in records],
            next_page_token=seal("held", scope, token),
        )

    async def GetHeldPacket(
        self, request: pb.GetHeldPacketRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetHeldPacketResponse:
        violations = self._approvals.check_target(request.topic, request.tracking_id)
        if violations:
            await _status.abort_invalid(context, "invalid held packet", violations)
        _, record = await self._approvals.find_held(context, request.topic, request.tracking_id)
        if record is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"packet {request.tracking_id} is not held on topic {request.topic!r}",
            )
            raise AssertionError("context.abort always raises")
        return pb.GetHeldPacketResponse(packet=held_message(record, self._packet_service))

    async def ApprovePacket(
        self, request: pb.ApprovePacketRequest, context: grpc.aio.ServicerContext
    ) -> pb.ApprovePacketResponse:
        return await self._approvals.approve(request, context)

    async def DenyPacket(
        self, request: pb.DenyPacketRequest, context: grpc.aio.ServicerContext
    ) -> pb.DenyPacketResponse:
        return await self._approvals.deny(request, context)

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
