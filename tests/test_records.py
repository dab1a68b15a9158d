"""Swarm records: session summaries, swarm registries, remediation scans."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest
import redis.asyncio as redis_asyncio

import packetbus
from packetbus import _custody
from packetbus.v1 import contents_pb2, custody_pb2, packet_pb2, speech_act_pb2
from packetbus.v1 import record_service_pb2 as pb
from packetbus_server import _keys
from packetbus_server._record_store import RecordStore
from tests.conftest import unique

DAY_MS = 86_400_000
_INFORM = speech_act_pb2.SPEECH_ACT_INFORM
_FIELD = {
    pb.RECORD_KIND_SESSION_SUMMARY: "session_summary",
    pb.RECORD_KIND_SWARM_REGISTRY: "swarm_registry",
    pb.RECORD_KIND_REMEDIATION_SCAN: "remediation_scan",
}


def _session(label: str) -> contents_pb2.SessionSummary:
    summary = contents_pb2.SessionSummary(
        label=label, date="2026-11-21", agents=["haiku-1", "haiku-2"], summary="went well"
    )
    summary.metrics["tasks_completed"] = 42
    return summary


def _registry(swarm_id: str) -> contents_pb2.SwarmRegistry:
    return contents_pb2.SwarmRegistry(
        swarm_id=swarm_id,
        coordinator="sonnet-1",
        members=[
            contents_pb2.SwarmMember(agent_id="haiku-1", role="worker", capabilities=["search"])
        ],
    )


def _scan(scan_type: str) -> contents_pb2.RemediationScan:
    return contents_pb2.RemediationScan(
        scan_type=scan_type,
        date="2026-11-21",
        violations=[contents_pb2.RemediationViolation(rule="stale-context", subject="k")],
        items_scanned=10,
    )


@pytest.mark.parametrize(
    ("record", "kind", "key_kind", "days"),
    [
        (_session("s"), pb.RECORD_KIND_SESSION_SUMMARY, "session", 30),
        (_registry("swarm-1"), pb.RECORD_KIND_SWARM_REGISTRY, "swarm", 7),
        (_scan("orphans"), pb.RECORD_KIND_REMEDIATION_SCAN, "remediation", 7),
    ],
)
async def test_each_kind_is_kept_for_its_default_ttl_and_its_chain_verifies(
    client: packetbus.Client,
    raw_redis: redis_asyncio.Redis,
    record: contents_pb2.SessionSummary | contents_pb2.SwarmRegistry | contents_pb2.RemediationScan,
    kind: pb.RecordKind.ValueType,
    key_kind: str,
    days: int,
) -> None:
    packet = packetbus.fill_defaults(
        packet_pb2.Packet(origin="coordinator-1", topic="records", speech_act=_INFORM)
    )
    getattr(packet, _FIELD[kind]).CopyFrom(record)
    put = await client.put_record(packet)
    assert (put.kind, put.created) == (kind, True)
    assert put.record_id == put.record.packet.tracking_id
    pttl = await raw_redis.pttl(_keys.record(key_kind, put.record_id))
    assert days * DAY_MS - 60_000 < pttl <= days * DAY_MS
    assert await raw_redis.zscore(_keys.record_index(key_kind), put.record_id) is not None

    stored = await client.get_record(kind, put.record_id)
    assert stored.content == put.record.content
    assert getattr(stored.packet, _FIELD[kind]) == record
    keys = {k.key_id: k for k in await client.signing_keys()}
    report = _custody.verify_chain(
        tracking_id=put.record_id,
        content=stored.content,
        chain=stored.packet.chain_of_custody,
        keys=keys,
        head=None,
    )
    assert report.entries
    assert all(e.ok for e in report.entries), report.failures()
    assert [
        custody_pb2.CustodyRecord.FromString(e.record).action
        for e in stored.packet.chain_of_custody
    ] == ["received", "dispatched"]

    # The same packet again: stored once, the original answered.
    again = await client.put_record(packet)
    assert again.created is False
    assert again.record.packet == put.record.packet


async def test_retention_can_be_chosen_within_bounds(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis
) -> None:
    put = await client.put_record(_scan("short"), origin="janitor-1", retention=120)
    assert 0 < await raw_redis.pttl(_keys.record("remediation", put.record_id)) <= 120_000
    with pytest.raises(packetbus.PacketbusError) as exc:
        await client.put_record(_scan("long"), origin="janitor-1", retention=91 * 86400)
    assert exc.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in exc.value.field_violations] == ["retention_seconds"]


async def test_records_list_newest_first_in_pages(client: packetbus.Client) -> None:
    label = unique("session")
    ids = [
        (await client.put_record(_session(f"{label}-{i}"), origin="c-1")).record_id
        for i in range(5)
    ]
    # Other tests' records may come first (newer) or after; the listing ends with
    # an empty token, on whatever page that is.
    seen: list[str] = []
    pages = 0
    token = ""
    while True:
        page = await client.list_records(
            pb.RECORD_KIND_SESSION_SUMMARY, page_size=2, page_token=token
        )
        pages += 1
        assert len(page.records) <= 2
        seen += [
            r.packet.tracking_id
            for r in page.records
            if r.packet.session_summary.label.startswith(label)
        ]
        token = page.next_page_token
        if not token or len(seen) == 5:
            break
    assert seen == ids[::-1]
    assert pages >= 3


async def test_records_stored_in_one_ms_list_newest_first_exactly(
    raw_redis: redis_asyncio.Redis,
) -> None:
    # The store's own clock argument makes every record share one ms: the order
    # must be the storing order, not how Redis breaks score ties (by id).
    store = RecordStore(raw_redis, retry_budget=5.0)
    kind = unique("kind")
    now_ms = int(time.time() * 1000)
    ids = [str(uuid.uuid4()) for _ in range(12)]
    for record_id in ids:
        status, _ = await store.put(
            kind, record_id, record_id, b"p", 1, now_ms=now_ms, expires_ms=now_ms + DAY_MS
        )
        assert status == "new"
    newest_first = ids[::-1]
    whole, token = await store.page(kind, "", 12)
    assert [r.record_id for r in whole] == newest_first
    seen: list[str] = []
    token = ""
    for _ in range(4):  # pages of 3 cut through the tie exactly
        page, token = await store.page(kind, token, 3)
        seen += [r.record_id for r in page]
    assert seen == newest_first
    assert await store.page(kind, token, 3) == ([], "")
    # An older record stored later (a replica whose clock runs behind) is still newer.
    await store.put(kind, "late", "late", b"p", 1, now_ms=now_ms - 5, expires_ms=now_ms + DAY_MS)
    assert [r.record_id for r in (await store.page(kind, "", 2))[0]] == ["late", ids[-1]]


def _data_packet() -> packet_pb2.Packet:
    packet = packet_pb2.Packet(origin="c-1", topic="records", speech_act=_INFORM)
    packet.data.update({"a": 1})
    return packet


async def test_bad_records_are_refused_and_nothing_is_stored(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis
) -> None:
    before = await raw_redis.zcard(_keys.record_index("swarm"))
    bad = _registry("")
    bad.members.add(agent_id="")
    with pytest.raises(packetbus.PacketbusError) as exc:
        await client.put_record(bad, origin="bad origin")
    assert exc.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in exc.value.field_violations} == {
        "packet.swarm_registry.swarm_id",
        "packet.swarm_registry.members[1].agent_id",
        "packet.origin",
    }
    with pytest.raises(packetbus.PacketbusError) as exc:
        await client.put_record(_data_packet())
    assert [v.field for v in exc.value.field_violations] == ["packet.contents"]
    assert await raw_redis.zcard(_keys.record_index("swarm")) == before
    with pytest.raises(packetbus.PacketbusError) as exc:
        await client.get_record(pb.RECORD_KIND_UNSPECIFIED, "x")
    assert {v.field for v in exc.value.field_violations} == {"kind", "record_id"}
    with pytest.raises(packetbus.PacketbusError) as exc:
        await client.get_record(
            pb.RECORD_KIND_SWARM_REGISTRY, "5f0e7f51-3f0a-4a52-9d0b-1f3c1d9a0a11"
        )
    assert exc.value.code == grpc.StatusCode.NOT_FOUND
