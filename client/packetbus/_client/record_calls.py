"""Client calls on swarm records (session summaries, registries, remediation scans)."""

from __future__ import annotations

from typing import cast

from packetbus.v1 import (
    contents_pb2,
    packet_pb2,
    packet_service_pb2,
    record_service_pb2,
    speech_act_pb2,
)

from .core import ClientCore
from .packet_defaults import fill_defaults


class RecordCalls(ClientCore):
    """Put, get and list swarm records."""

    async def put_record(
        self,
        record: contents_pb2.SessionSummary
        | contents_pb2.SwarmRegistry
        | contents_pb2.RemediationScan
        | packet_pb2.Packet,
        *,
        origin: str = "",
        topic: str = "records",
        retention: int = 0,
        tracking_id: str = "",
        timeout: float | None = None,
    ) -> record_service_pb2.PutRecordResponse:
        """Store a swarm record (kept for its kind's retention, or `retention` s).

        Its id is the packet's tracking id (`tracking_id` for a record given bare;
        a new UUID when empty): the same record again under it answers the
        original (created False), another is ALREADY_EXISTS."""
        if isinstance(record, packet_pb2.Packet):
            packet = record
        else:
            packet = packet_pb2.Packet(
                origin=origin,
                topic=topic,
                speech_act=speech_act_pb2.SPEECH_ACT_INFORM,
                tracking_id=tracking_id,
            )
            field = {
                contents_pb2.SessionSummary: "session_summary",
                contents_pb2.SwarmRegistry: "swarm_registry",
                contents_pb2.RemediationScan: "remediation_scan",
            }[type(record)]
            getattr(packet, field).CopyFrom(record)
        fill_defaults(packet, self._config.identity)
        request = record_service_pb2.PutRecordRequest(packet=packet, retention_seconds=retention)
        return await self._call(self._records.PutRecord, request, timeout)

    async def get_record(
        self, kind: int, record_id: str, *, timeout: float | None = None
    ) -> packet_service_pb2.StoredPacket:
        request = record_service_pb2.GetRecordRequest(kind=kind, record_id=record_id)  # type: ignore[arg-type]
        response = await self._call(self._records.GetRecord, request, timeout)
        return cast(packet_service_pb2.StoredPacket, response.record)

    async def list_records(
        self,
        kind: int,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> record_service_pb2.ListRecordsResponse:
        """One page of a kind's records, newest first (follow next_page_token)."""
        request = record_service_pb2.ListRecordsRequest(
            kind=kind,  # type: ignore[arg-type]
            page_size=page_size,
            page_token=page_token,
        )
        return await self._call(self._records.ListRecords, request, timeout)
