"""Client calls on chains of custody: agents' signing keys, verification, export for audit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import cast

from packetbus.v1 import custody_pb2, custody_service_pb2, packet_service_pb2

from .. import _custody
from .._config import AgentIdentity
from .._export import export_request
from .._export_stream import export_stream
from .core import ClientCore


class CustodyCalls(ClientCore):
    """Register and endorse signing keys; verify custody; export stored packets."""

    async def register_identity(
        self, identity: AgentIdentity | None = None, *, timeout: float | None = None
    ) -> custody_pb2.SigningKey:
        """Register an agent's public key (default: this client's identity) for its id.

        The first key of an agent id binds it; registering the same key again
        is harmless. A further key must be endorsed by a registered one: use
        `endorse_identity`.
        """
        identity = identity or self._config.identity
        if identity is None:
            raise ValueError("no identity: pass one, or connect with ClientConfig(identity=...)")
        message = _custody.agent_key_message(identity.agent_id, identity.signer.public_key)
        request = custody_service_pb2.RegisterAgentKeyRequest(
            agent_id=identity.agent_id,
            public_key=identity.signer.public_key,
            proof=identity.signer.sign(b"", message),
        )
        return await self._register(request, timeout)

    async def endorse_identity(
        self, new: AgentIdentity, endorser: AgentIdentity, *, timeout: float | None = None
    ) -> custody_pb2.SigningKey:
        """Register another key for an agent, endorsed by a key it already has (rotation)."""
        message = _custody.agent_key_message(new.agent_id, new.signer.public_key)
        request = custody_service_pb2.RegisterAgentKeyRequest(
            agent_id=new.agent_id,
            public_key=new.signer.public_key,
            proof=new.signer.sign(b"", message),
            endorsing_key_id=endorser.signer.key_id,
            endorsement=endorser.signer.sign(b"", message),
        )
        return await self._register(request, timeout)

    async def _register(
        self, request: custody_service_pb2.RegisterAgentKeyRequest, timeout: float | None
    ) -> custody_pb2.SigningKey:
        response = await self._call(self._custody.RegisterAgentKey, request, timeout)
        return cast(custody_pb2.SigningKey, response.key)

    async def signing_keys(self, *, timeout: float | None = None) -> list[custody_pb2.SigningKey]:
        """Every public key custody entries may be signed with (servers' and agents')."""
        response = await self._call(
            self._custody.GetSigningKeys, custody_service_pb2.GetSigningKeysRequest(), timeout
        )
        return list(response.keys)

    async def verify_custody(
        self, tracking_id: str, *, timeout: float | None = None
    ) -> custody_service_pb2.VerifyCustodyResponse:
        """The server's verdict on a stored packet's chain, entry by entry."""
        request = custody_service_pb2.VerifyCustodyRequest(tracking_id=tracking_id)
        return await self._call(self._custody.VerifyCustody, request, timeout)

    async def export_packets(
        self, topic: str = "", *, timeout: float | None = None
    ) -> AsyncIterator[packet_service_pb2.StoredPacket]:
        """Every stored packet of `topic` (or of all topics, by name), with content bytes and
        a signed head; resumed after the last one on UNAVAILABLE, as `export` is.
        `timeout` bounds the whole export (None: no limit)."""
        request = custody_service_pb2.ExportPacketsRequest(topic=topic)
        async for response in export_stream(self._custody, request, timeout):
            for stored in response.packets:
                yield stored

    async def export(
        self,
        topic: str = "",
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        include_carcel_entries: bool = False,
        include_decisions: bool = False,
        task_queue: str = "",
        finding_task_id: str = "",
        record_kind: int = 0,
        resume_token: str = "",
        timeout: float | None = None,
    ) -> AsyncIterator[custody_service_pb2.ExportPacketsResponse]:
        """For audit: the stored packets of `topic` (or all topics) stored between `since`
        and `until` (naive datetimes are UTC), and optionally the carcel entries and
        governance decisions of that time, as the server sends them (in batches; topics
        by name, within one its packets, then carcel entries, then decisions). With
        `task_queue` instead (no topic, no include_*): that queue's task packets posted
        between `since` and `until`, in the queue's order (needs tasks.read on it); with
        `finding_task_id` (alone): that task's finding packets, first posted first
        (needs findings.read on it); with `record_kind` (alone; a RecordKind, e.g.
        RECORD_KIND_SESSION_SUMMARY): that kind's record packets, first stored first
        (needs records.read on it). A stream
        that ends UNAVAILABLE (a drain, a lost connection) resumes after the last
        response, with no item lost or repeated. Each response's `resume_token`, given
        here with the same other arguments, continues after it (e.g. after a
        PacketbusError). `timeout` bounds the whole export (None: no limit)."""
        request = export_request(
            topic,
            since=since,
            until=until,
            include_carcel_entries=include_carcel_entries,
            include_decisions=include_decisions,
            task_queue=task_queue,
            finding_task_id=finding_task_id,
            record_kind=record_kind,
        )
        request.resume_token = resume_token
        async for response in export_stream(self._custody, request, timeout):
            yield response
