"""Approving and denying held packets: the agent signs its decision onto the packet's chain."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc

from packetbus.v1 import custody_pb2, packet_service_pb2, policy_service_pb2_grpc
from packetbus.v1 import policy_service_pb2 as pb

from . import _custody
from ._calls import Call
from ._config import AgentIdentity
from ._errors import PacketbusError


def decision_entry(
    stored: packet_service_pb2.StoredPacket,
    identity: AgentIdentity,
    action: str,
    *,
    reason: str = "",
    now_ns: int | None = None,
) -> custody_pb2.CustodyEntry:
    """`identity`'s signed custody entry continuing `stored`'s chain: `action` is
    "approved" or "denied". The server appends it only where it was signed to go."""
    chain = stored.packet.chain_of_custody
    record = custody_pb2.CustodyRecord(
        sequence=len(chain),
        actor=identity.agent_id,
        action=action,
        content_digest=_custody.digest(stored.content),
        previous_hash=_custody.entry_hash(chain[-1].record) if chain else b"",
        tracking_id=stored.packet.tracking_id,
        reason=reason,
    )
    record.occurred_at.FromNanoseconds(time.time_ns() if now_ns is None else now_ns)
    return _custody.sign_entry(identity.signer, record)


_CHAIN_RACES = 3


class Governance:
    """The PolicyService calls behind `Client`'s policy methods."""

    def __init__(
        self,
        stub: policy_service_pb2_grpc.PolicyServiceStub,
        call: Call,
    ) -> None:
        self._stub = stub
        self._call = call

    async def get_policy(self, timeout: float | None) -> pb.GetPolicyResponse:
        response: pb.GetPolicyResponse = await self._call(
            self._stub.GetPolicy, pb.GetPolicyRequest(), timeout
        )
        return response

    async def held(
        self, topic: str, page_size: int, timeout: float | None
    ) -> AsyncIterator[pb.HeldPacket]:
        token = ""
        while True:
            request = pb.ListHeldPacketsRequest(topic=topic, page_size=page_size, page_token=token)
            response: pb.ListHeldPacketsResponse = await self._call(
                self._stub.ListHeldPackets, request, timeout
            )
            for held in response.packets:
                yield held
            token = response.next_page_token
            if not token:
                return

    async def get_held(self, topic: str, tracking_id: str, timeout: float | None) -> pb.HeldPacket:
        request = pb.GetHeldPacketRequest(topic=topic, tracking_id=tracking_id)
        response: pb.GetHeldPacketResponse = await self._call(
            self._stub.GetHeldPacket, request, timeout
        )
        return response.packet

    async def decide(
        self,
        topic: str,
        tracking_id: str,
        identity: AgentIdentity,
        action: str,
        reason: str,
        timeout: float | None,
    ) -> pb.ApprovePacketResponse | pb.DenyPacketResponse:
        """Sign `action` after the held packet's chain and send it; signed again when
        the chain moved on meanwhile (ABORTED)."""
        for attempt in range(_CHAIN_RACES):
            try:
                held = await self.get_held(topic, tracking_id, timeout)
            except PacketbusError as exc:
                if exc.code != grpc.StatusCode.NOT_FOUND:
                    raise
                # Not held (anymore): the server answers what became of it.
                entry = custody_pb2.CustodyEntry()
            else:
                entry = decision_entry(held.packet, identity, action, reason=reason)
            try:
                if action == _custody.APPROVED:
                    approve = pb.ApprovePacketRequest(
                        topic=topic, tracking_id=tracking_id, approval=entry
                    )
                    approved: pb.ApprovePacketResponse = await self._call(
                        self._stub.ApprovePacket, approve, timeout
                    )
                    return approved
                deny = pb.DenyPacketRequest(topic=topic, tracking_id=tracking_id, denial=entry)
                denied: pb.DenyPacketResponse = await self._call(
                    self._stub.DenyPacket, deny, timeout
                )
                return denied
            except PacketbusError as exc:
                if exc.code != grpc.StatusCode.ABORTED or attempt == _CHAIN_RACES - 1:
                    raise
        raise AssertionError("unreachable")

    async def stats(self, topic: str, timeout: float | None) -> pb.GetPolicyStatsResponse:
        request = pb.GetPolicyStatsRequest(topic=topic)
        response: pb.GetPolicyStatsResponse = await self._call(
            self._stub.GetPolicyStats, request, timeout
        )
        return response
