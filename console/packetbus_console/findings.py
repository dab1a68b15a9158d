"""Findings routes: a task's findings and their conflicts (each with the two findings
behind it), and the escalations (each with the findings it carries). Read-only:
ListFindings, DetectConflicts (a query: it writes nothing) and ListEscalations.

A Finding is ``{"findingId", "taskId", "claim", "confidence", "subject",
"refutes", "citations", "workerId", "labels", "origin", "trackingId",
"dispatchedAt"}``: the Finding contents of its packet (``findingId`` its id, else
the packet's tracking id, as the server names it) and who sent it when.

- ``GET /api/findings?taskId=&threshold=`` -> ``{"taskId", "findings": [Finding]
  (posted first first), "conflicts": [Conflict]}``. A Conflict is FindingConflict
  (``taskId``, ``subject``, ``firstFindingId``, ``secondFindingId``, ``reason``)
  with ``first`` and ``second``: the two Findings (null when no longer kept).
  ``taskId`` is required; ``threshold`` (0-1, default the server's 0.3): conflicts
  are confidences further apart than it, or opposite claims.
  ``GET /api/findings/events``: the same, live (`live`).
- ``GET /api/escalations?taskId=&limit=`` -> ``{"escalations": [Escalation],
  "truncated": bool}``, oldest first (of the task, or all), at most `limit`
  (1-1000). An Escalation is ``{"trackingId", "origin", "taskId", "reason",
  "dispatchedAt", "findings": [Finding]}``: the ESCALATE packet and the findings
  it carries as they were when escalated. ``GET /api/escalations/events``: live.

Bad input (no taskId, a threshold outside 0-1) is 400 ``INVALID_ARGUMENT``; a
refused call 401/403 as `errors` maps it.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from starlette.requests import Request

from packetbus import Client
from packetbus.v1 import packet_pb2, packet_service_pb2

from .errors import ApiError
from .live import json_route, live_route
from .shapes import as_json, limit, number


def finding_view(packet: packet_pb2.Packet) -> dict[str, Any]:
    """The Finding of a finding packet, as the module docstring shows it."""
    finding = packet.finding
    return {
        "findingId": finding.id or packet.tracking_id,
        "taskId": finding.task_id,
        "claim": finding.claim,
        "confidence": finding.confidence,
        "subject": finding.subject,
        "refutes": finding.refutes,
        "citations": list(finding.citations),
        "workerId": finding.worker_id,
        "labels": dict(finding.labels),
        "origin": packet.origin,
        "trackingId": packet.tracking_id,
        "dispatchedAt": packet.dispatched_at.ToJsonString()
        if packet.HasField("dispatched_at")
        else "",
    }


def _threshold(request: Request) -> float:
    return number(request, "threshold", low=0.0, high=1.0, default=0.0)


async def findings(request: Request, client: Client) -> dict[str, Any]:
    task_id = request.query_params.get("taskId", "")
    if not task_id:
        raise ApiError(400, "INVALID_ARGUMENT", "taskId is required")
    threshold = _threshold(request)
    stored = await client.list_findings(task_id, timeout=10)
    conflicts = await client.detect_conflicts(task_id, threshold=threshold, timeout=10)
    views = [finding_view(s.packet) for s in stored]
    by_id = {v["findingId"]: v for v in views}
    return {
        "taskId": task_id,
        "findings": views,
        "conflicts": [
            {
                **as_json(c),
                "first": by_id.get(c.first_finding_id),
                "second": by_id.get(c.second_finding_id),
            }
            for c in conflicts
        ],
    }


def escalation_view(stored: packet_service_pb2.StoredPacket) -> dict[str, Any]:
    """An ESCALATE packet (its data: task_id, reason, findings as packets' JSON)."""
    packet = stored.packet
    data = json_format.MessageToDict(packet.data)
    carried = []
    for raw in data.get("findings", []):
        found = packet_pb2.Packet()
        try:
            json_format.ParseDict(raw, found, ignore_unknown_fields=True)
        except json_format.ParseError:
            continue  # not a packet: nothing to show for it
        carried.append(finding_view(found))
    return {
        "trackingId": packet.tracking_id,
        "origin": packet.origin,
        "taskId": str(data.get("task_id", "")),
        "reason": str(data.get("reason", "")),
        "dispatchedAt": packet.dispatched_at.ToJsonString()
        if packet.HasField("dispatched_at")
        else "",
        "findings": carried,
    }


async def escalations(request: Request, client: Client) -> dict[str, Any]:
    most = limit(request)
    found = await client.list_escalations(request.query_params.get("taskId", ""), timeout=10)
    return {
        "escalations": [escalation_view(e) for e in found[:most]],
        "truncated": len(found) > most,
    }


ROUTES = (
    ("/api/findings", ("GET",), json_route(findings)),
    ("/api/findings/events", ("GET",), live_route(findings)),
    ("/api/escalations", ("GET",), json_route(escalations)),
    ("/api/escalations/events", ("GET",), live_route(escalations)),
)
