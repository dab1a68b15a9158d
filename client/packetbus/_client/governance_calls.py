"""Client calls on governance: the policy in force, held packets, approvals, statistics."""

from __future__ import annotations

from collections.abc import AsyncIterator

from packetbus.v1 import packet_service_pb2, policy_service_pb2

from .. import _custody
from .._config import AgentIdentity
from .core import ClientCore


class GovernanceCalls(ClientCore):
    """The policy; held packets: list, get, approve, deny; policy statistics."""

    async def get_policy(
        self, *, timeout: float | None = None
    ) -> policy_service_pb2.GetPolicyResponse:
        """The server's governance policy in force (version, rules) and its last load error."""
        return await self._governance.get_policy(timeout)

    async def list_held_packets(
        self, topic: str = "", *, page_size: int = 0, timeout: float | None = None
    ) -> AsyncIterator[policy_service_pb2.HeldPacket]:
        """Packets a policy rule holds for approval (of `topic`, or all), oldest first;
        fetched a page at a time (`timeout` is per page)."""
        async for held in self._governance.held(topic, page_size, timeout):
            yield held

    async def get_held_packet(
        self, topic: str, tracking_id: str, *, timeout: float | None = None
    ) -> policy_service_pb2.HeldPacket:
        return await self._governance.get_held(topic, tracking_id, timeout)

    def _approver(self, identity: AgentIdentity | None) -> AgentIdentity:
        found = identity or self._config.identity
        if found is None:
            raise ValueError("no identity: pass one, or connect with ClientConfig(identity=...)")
        return found

    async def approve_packet(
        self,
        topic: str,
        tracking_id: str,
        *,
        identity: AgentIdentity | None = None,
        note: str = "",
        timeout: float | None = None,
    ) -> packet_service_pb2.Receipt:
        """Approve a held packet: it is stored on its topic, its chain carrying an
        "approved" entry signed with `identity`'s key (default: this client's identity,
        which must be registered). Returns its receipt; approving again is harmless."""
        response = await self._governance.decide(
            topic, tracking_id, self._approver(identity), _custody.APPROVED, note, timeout
        )
        assert isinstance(response, policy_service_pb2.ApprovePacketResponse)
        return response.receipt

    async def deny_packet(
        self,
        topic: str,
        tracking_id: str,
        *,
        reason: str,
        identity: AgentIdentity | None = None,
        timeout: float | None = None,
    ) -> str:
        """Deny a held packet: it goes to its topic's carcel with a signed "denied" entry
        and `reason`. Returns its carcel entry id."""
        response = await self._governance.decide(
            topic, tracking_id, self._approver(identity), _custody.DENIED, reason, timeout
        )
        assert isinstance(response, policy_service_pb2.DenyPacketResponse)
        return str(response.carcel_entry_id)

    async def policy_stats(
        self, topic: str = "", *, timeout: float | None = None
    ) -> policy_service_pb2.GetPolicyStatsResponse:
        """How many packets the policy rejected, held, and agents approved or denied:
        by rule, by reason and by decision (of `topic`, or all topics added up)."""
        return await self._governance.stats(topic, timeout)
