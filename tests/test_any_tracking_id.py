"""Any packet's tracking id works with GetPacket and VerifyCustody (issue 17, item 5):
task, finding and record packets, which live in their queue's, task's and kind's keys
and not in a topic log, are found by tracking id, with the chain as it is now (a
task's claim and completion hops included), and read with the permission their own
Get call needs.
"""

from __future__ import annotations

import grpc
import pytest

import packetbus
from packetbus.v1 import contents_pb2, custody_pb2
from packetbus.v1 import record_service_pb2 as records_pb
from packetbus_server import RunningServer
from tests._identities import Issuer, client_as, guarded_fixtures, spiffe
from tests.conftest import unique, verified_actions

OK = custody_pb2.CUSTODY_VERDICT_OK


async def _same_as_fetched(client: packetbus.Client, expected: packetbus.StoredPacket) -> list[str]:
    """GetPacket and VerifyCustody of `expected`'s tracking id answer its packet and
    chain, every entry and the head verified OK; the chain's actions."""
    tracking_id = expected.packet.tracking_id
    got = await client.get_packet(tracking_id)
    assert got.packet == expected.packet
    assert got.content == expected.content
    assert got.receipt == expected.receipt
    assert got.receipt.cursor == ""  # in no topic's log (README: get)
    report = await client.verify_custody(tracking_id)
    assert report.verified
    assert report.head_verdict == OK
    assert [e.verdict for e in report.entries] == [OK] * len(expected.packet.chain_of_custody)
    assert report.packet.packet == expected.packet
    return await verified_actions(client, got)


async def test_a_task_is_found_by_tracking_id_with_its_claim_and_completion(
    client: packetbus.Client,
) -> None:
    queue = client.task_queue(unique("queue"))
    posted = await queue.post(packetbus.Task(id="t-1", description="do it"), origin="planner")
    claimed = await queue.claim("worker-1", lease_seconds=30)
    assert claimed is not None
    await claimed.complete({"answer": 42})
    now = await queue.get("t-1")
    assert now.packet.packet.tracking_id == posted.packet.packet.tracking_id

    actions = await _same_as_fetched(client, now.packet)
    assert actions[-2:] == ["claimed", "completed"]


async def test_a_finding_is_found_by_tracking_id(client: packetbus.Client) -> None:
    posted = await client.post_finding(
        contents_pb2.Finding(task_id=unique("task"), claim="the sky is blue", confidence=0.9),
        origin="analyst-1",
    )
    await _same_as_fetched(client, posted.finding)


async def test_a_record_is_found_by_tracking_id(client: packetbus.Client) -> None:
    put = await client.put_record(
        contents_pb2.SessionSummary(label=unique("s"), date="2026-11-21", summary="went well"),
        origin="c-1",
    )
    assert put.kind == records_pb.RECORD_KIND_SESSION_SUMMARY
    await _same_as_fetched(client, put.record)


async def test_an_unknown_tracking_id_is_still_not_found(client: packetbus.Client) -> None:
    with pytest.raises(packetbus.PacketbusError) as caught:
        await client.get_packet("00000000-0000-4000-8000-000000000017")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND


# -- authorization: the permission of the packet's own Get call, on its resource ---------

WRITER = spiffe("writer-1")
READER = spiffe("reader-2")  # may read the "open.*" queue, tasks and kind, nothing else
OUTSIDER = spiffe("outsider-3")  # may subscribe to and export every topic, read nothing
GRANTS = {
    WRITER: [("tasks.post", "*"), ("findings.post", "*"), ("records.write", "*")],
    READER: [
        ("tasks.read", "open.*"),
        ("findings.read", "open.*"),
        ("records.read", "session_summary"),
    ],
    OUTSIDER: [("topics.subscribe", "*"), ("audit.export", "*")],
}


issuer, guarded = guarded_fixtures(GRANTS, "any-tracking-id")


async def _as(guarded: RunningServer, issuer: Issuer, who: str) -> packetbus.Client:
    return await client_as(f"127.0.0.1:{guarded.port}", issuer.token(who))


async def _not_found(client: packetbus.Client, tracking_id: str) -> None:
    for call in (client.get_packet, client.verify_custody):
        with pytest.raises(packetbus.PacketbusError) as caught:
            await call(tracking_id)
        assert caught.value.code == grpc.StatusCode.NOT_FOUND, call


@pytest.mark.one_backend
async def test_reading_a_placed_packet_needs_its_own_read_permission(
    guarded: RunningServer, issuer: Issuer
) -> None:
    async with (
        await _as(guarded, issuer, WRITER) as writer,
        await _as(guarded, issuer, READER) as reader,
        await _as(guarded, issuer, OUTSIDER) as outsider,
    ):
        open_task = await writer.task_queue(unique("open")).post(
            packetbus.Task(id="t-1"), origin="writer-1"
        )
        closed_task = await writer.task_queue(unique("closed")).post(
            packetbus.Task(id="t-1"), origin="writer-1"
        )
        open_finding = await writer.post_finding(
            contents_pb2.Finding(task_id=unique("open"), claim="c", confidence=0.5),
            origin="writer-1",
        )
        closed_finding = await writer.post_finding(
            contents_pb2.Finding(task_id=unique("closed"), claim="c", confidence=0.5),
            origin="writer-1",
        )
        session = await writer.put_record(
            contents_pb2.SessionSummary(label="s", date="2026-11-21"), origin="writer-1"
        )
        scan = await writer.put_record(
            contents_pb2.RemediationScan(scan_type="orphans", date="2026-11-21"), origin="writer-1"
        )

        readable = [open_task.packet, open_finding.finding, session.record]
        for stored in readable:
            await _same_as_fetched(reader, stored)
        unreadable = [closed_task.packet, closed_finding.finding, scan.record]
        for stored in unreadable:
            await _not_found(reader, stored.packet.tracking_id)
        # Topic permissions (even on every topic) read none of them.
        for stored in readable + unreadable:
            await _not_found(outsider, stored.packet.tracking_id)
