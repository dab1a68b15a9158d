"""Client calls on findings: post, read, detect conflicts, escalate to a human."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from packetbus.v1 import (
    contents_pb2,
    finding_service_pb2,
    packet_pb2,
    packet_service_pb2,
    speech_act_pb2,
)

from .._pages import collect
from .core import ClientCore
from .packet_defaults import fill_defaults


class FindingCalls(ClientCore):
    """Post, get and list findings; detect conflicts; escalate and list escalations."""

    async def post_finding(
        self,
        finding: contents_pb2.Finding | packet_pb2.Packet,
        *,
        origin: str = "",
        topic: str = "findings",
        timeout: float | None = None,
    ) -> finding_service_pb2.PostFindingResponse:
        """Post a finding of a task (Finding.task_id is required). The response lists the
        earlier findings of the task it conflicts with; each conflict is also published
        once on the topic "findings.conflicts"."""
        if isinstance(finding, packet_pb2.Packet):
            packet = finding
        else:
            packet = packet_pb2.Packet(
                origin=origin,
                topic=topic,
                speech_act=speech_act_pb2.SPEECH_ACT_INFORM,
                finding=finding,
            )
        fill_defaults(packet, self._config.identity)
        request = finding_service_pb2.PostFindingRequest(packet=packet)
        return await self._call(self._findings.PostFinding, request, timeout)

    async def get_finding(
        self, task_id: str, finding_id: str, *, timeout: float | None = None
    ) -> packet_service_pb2.StoredPacket:
        request = finding_service_pb2.GetFindingRequest(task_id=task_id, finding_id=finding_id)
        response = await self._call(self._findings.GetFinding, request, timeout)
        return cast(packet_service_pb2.StoredPacket, response.finding)

    async def list_findings(
        self, task_id: str, *, timeout: float | None = None
    ) -> list[packet_service_pb2.StoredPacket]:
        """A task's findings, first posted first (fetched a page at a time: `timeout`
        is per page)."""

        async def page(token: str) -> finding_service_pb2.ListFindingsResponse:
            request = finding_service_pb2.ListFindingsRequest(task_id=task_id, page_token=token)
            return await self._call(self._findings.ListFindings, request, timeout)

        return await collect(page, lambda r: r.findings)

    async def detect_conflicts(
        self, task_id: str, *, threshold: float = 0.0, timeout: float | None = None
    ) -> list[finding_service_pb2.FindingConflict]:
        """Every conflicting pair among a task's findings (0: the server's threshold, 0.3),
        fetched a page at a time (`timeout` is per page)."""

        async def page(token: str) -> finding_service_pb2.DetectConflictsResponse:
            request = finding_service_pb2.DetectConflictsRequest(
                task_id=task_id, threshold=threshold, page_token=token
            )
            return await self._call(self._findings.DetectConflicts, request, timeout)

        return await collect(page, lambda r: r.conflicts)

    async def escalate(
        self,
        task_id: str,
        finding_ids: Sequence[str],
        *,
        reason: str,
        origin: str = "",
        timeout: float | None = None,
    ) -> packet_service_pb2.StoredPacket:
        """Escalate to a human: an ESCALATE packet on the topic "escalations" carrying the
        supporting findings. `origin` defaults to this client's identity. The server's
        policy judges the packet: a rejection raises PERMISSION_DENIED (ErrorInfo
        POLICY_REJECTED); a held escalation comes back with no receipt cursor, waiting
        for `approve_packet("escalations", its tracking id)`."""
        who = origin or (self._config.identity.agent_id if self._config.identity else "")
        request = finding_service_pb2.EscalateRequest(
            task_id=task_id, origin=who, reason=reason, finding_ids=finding_ids
        )
        response = await self._call(self._findings.Escalate, request, timeout)
        return cast(packet_service_pb2.StoredPacket, response.escalation)

    async def list_escalations(
        self, task_id: str = "", *, timeout: float | None = None
    ) -> list[packet_service_pb2.StoredPacket]:
        """Escalations (of one task, or all), oldest first (fetched a page at a time:
        `timeout` is per page)."""

        async def page(token: str) -> finding_service_pb2.ListEscalationsResponse:
            request = finding_service_pb2.ListEscalationsRequest(task_id=task_id, page_token=token)
            return await self._call(self._findings.ListEscalations, request, timeout)

        return await collect(page, lambda r: r.escalations)
