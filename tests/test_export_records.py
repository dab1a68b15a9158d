"""ExportPackets of a record kind (issue 17, deliverable 3): `record_kind` exports that
kind's record packets, first stored first (ListRecords' order reversed), each as
GetRecord shows it with a signed head, in the export file's packet lines (`packetbus
export --record-kind`), verifiable offline; resumable after any response; with
records.read on the kind (what ListRecords needs); bad input is INVALID_ARGUMENT on
its field.

A kind's index is one per store, shared by every test on the backend: an export's
whole content is checked against ListRecords of the same kind, and what a test posts
against the tail it adds after the previous export's last token.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest
import redis.asyncio as redis_asyncio
from google.protobuf import timestamp_pb2

import packetbus
from packetbus._export import verify_export
from packetbus.v1 import contents_pb2, custody_pb2, custody_service_pb2
from packetbus.v1 import record_service_pb2 as records_pb
from packetbus_server import RunningServer, _keys
from tests._exporting import exporter_fixtures
from tests._identities import Issuer, client_as, guarded_fixtures, spiffe
from tests.conftest import unique, verified_actions
from tests.test_custody import cli, offline_verify

# Small replies: about one record packet per response, so an export takes several.
BUDGET = 400
SWARM = records_pb.RECORD_KIND_SWARM_REGISTRY
SESSION = records_pb.RECORD_KIND_SESSION_SUMMARY
SCAN = records_pb.RECORD_KIND_REMEDIATION_SCAN


exporter, bus = exporter_fixtures(BUDGET)


async def _export(
    bus: packetbus.Client, kind: int, token: str = ""
) -> list[custody_service_pb2.ExportPacketsResponse]:
    return [r async for r in bus.export(record_kind=kind, resume_token=token)]


def _ids(responses: list[custody_service_pb2.ExportPacketsResponse]) -> list[str]:
    return [p.packet.tracking_id for r in responses for p in r.packets]


async def _listed(bus: packetbus.Client, kind: int) -> list[str]:
    """Every live record id of `kind`, newest first (ListRecords, every page)."""
    ids: list[str] = []
    token = ""
    while True:
        page = await bus.list_records(kind, page_size=1000, page_token=token)
        ids += [r.packet.tracking_id for r in page.records]
        token = page.next_page_token
        if not token:
            return ids


async def _put_swarms(bus: packetbus.Client, count: int) -> list[str]:
    """`count` new swarm registries; their record ids, in storing order."""
    put = [
        await bus.put_record(
            contents_pb2.SwarmRegistry(swarm_id=unique("swarm"), coordinator="c-1"),
            origin="c-1",
        )
        for _ in range(count)
    ]
    return [p.record_id for p in put]


async def test_a_kind_exports_every_record_oldest_first_with_a_signed_head(
    bus: packetbus.Client,
) -> None:
    before = await _export(bus, SWARM)
    posted = await _put_swarms(bus, 3)
    await bus.put_record(  # another kind's: not exported
        contents_pb2.SessionSummary(label=unique("s"), date="2026-11-30"), origin="c-1"
    )

    responses = await _export(bus, SWARM)
    assert len(responses) > 1  # BUDGET: several responses
    exported = [p for r in responses for p in r.packets]
    assert _ids(responses) == list(reversed(await _listed(bus, SWARM)))
    assert _ids(responses)[-3:] == posted
    assert len(exported) == len(_ids(before)) + 3
    for stored in exported[-3:]:
        # As GetRecord shows it, with a signed head over its chain.
        got = await bus.get_record(SWARM, stored.packet.tracking_id)
        assert (stored.packet, stored.content) == (got.packet, got.content)
        assert not stored.HasField("receipt")
        head = custody_pb2.CustodyHeadStatement.FromString(stored.custody_head.statement)
        assert head.length == len(stored.packet.chain_of_custody)
        assert (await verified_actions(bus, stored))[-1] == "dispatched"
    assert not any(r.carcel_entries or r.decisions for r in responses)


async def test_an_export_of_a_kind_resumes_after_any_response(bus: packetbus.Client) -> None:
    await _put_swarms(bus, 2)
    responses = await _export(bus, SWARM)
    ids = [[p.packet.tracking_id for p in r.packets] for r in responses]
    for i, response in enumerate(responses):
        assert response.resume_token.split(".")[2] == "r"
        rest = await _export(bus, SWARM, response.resume_token)
        assert _ids(rest) == [t for part in ids[i + 1 :] for t in part]
    # Records stored since are the rest of an export resumed from its last token.
    later = await _put_swarms(bus, 2)
    assert _ids(await _export(bus, SWARM, responses[-1].resume_token)) == later

    # A token only continues its own export: not another kind's, nor a topic's.
    for other in (
        custody_service_pb2.ExportPacketsRequest(record_kind=SESSION),
        custody_service_pb2.ExportPacketsRequest(topic="records"),
    ):
        with pytest.raises(packetbus.PacketbusError) as caught:
            _ = [
                r
                async for r in bus.export(
                    other.topic,
                    record_kind=other.record_kind,
                    resume_token=responses[0].resume_token,
                )
            ]
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [(v.field, v.reason) for v in caught.value.field_violations] == [
            ("resume_token", "RESUME_TOKEN_MISMATCH")
        ]


async def test_an_expired_record_is_left_out(
    bus: packetbus.Client, raw_redis: redis_asyncio.Redis
) -> None:
    first, gone, last = await _put_swarms(bus, 3)
    await raw_redis.delete(_keys.record("swarm", gone))  # as its retention ran out
    assert _ids(await _export(bus, SWARM))[-2:] == [first, last]


async def test_the_cli_exports_a_kind_and_every_chain_verifies_offline(
    bus: packetbus.Client, exporter: RunningServer, tmp_path: Path
) -> None:
    await bus.put_record(
        contents_pb2.RemediationScan(scan_type=unique("orphans"), date="2026-11-30"),
        origin="c-1",
    )
    expected = list(reversed(await _listed(bus, SCAN)))
    path = tmp_path / "records.jsonl"
    target = f"127.0.0.1:{exporter.port}"
    wrote = await asyncio.to_thread(
        cli, target, "export", "--record-kind", "remediation", "--out", str(path)
    )
    assert wrote.returncode == 0, wrote.stderr
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["kind"] for line in lines] == ["keys"] + ["packet"] * len(expected)
    assert [line["packet"]["packet"]["trackingId"] for line in lines[1:]] == expected

    offline = await asyncio.to_thread(offline_verify, path)
    assert offline.returncode == 0, offline.stdout
    report = await asyncio.to_thread(verify_export, path)
    count = len(expected)
    assert (report.packets, report.verified, report.failures) == (count, count, [])

    # One changed byte of a record's content fails it, by its tracking id.
    altered = tmp_path / "altered.jsonl"
    lines[-1]["packet"]["packet"]["remediationScan"]["scanType"] = "something else"
    altered.write_text("".join(json.dumps(line) + "\n" for line in lines))
    bad = await asyncio.to_thread(verify_export, altered)
    assert (bad.packets, bad.verified) == (count, count - 1)
    assert {what.split(" ")[0] for what, _ in bad.failures} == {expected[-1]}

    # --record-kind names one source: argparse refuses it beside --topic.
    both = await asyncio.to_thread(
        cli, target, "export", "--topic", "x", "--record-kind", "swarm", "--out", str(path)
    )
    assert both.returncode == 2
    assert "not allowed with argument" in both.stderr


@pytest.mark.parametrize(
    ("request_fields", "expected"),
    [
        ({"record_kind": 99}, [("record_kind", "ENUM")]),
        (
            {"record_kind": SWARM, "topic": "t", "include_carcel_entries": True},
            [("topic", "EXCLUSIVE"), ("include_carcel_entries", "EXCLUSIVE")],
        ),
        (
            {"record_kind": SWARM, "until": timestamp_pb2.Timestamp(seconds=1)},
            [("until", "EXCLUSIVE")],
        ),
        ({"record_kind": SWARM, "task_queue": "q"}, [("record_kind", "EXCLUSIVE")]),
        ({"record_kind": SWARM, "finding_task_id": "t"}, [("record_kind", "EXCLUSIVE")]),
        ({"record_kind": SWARM, "resume_token": "e1.nope"}, [("resume_token", "RESUME_TOKEN")]),
    ],
)
async def test_bad_input_is_invalid_argument_on_its_field(
    bus: packetbus.Client, request_fields: dict[str, object], expected: list[tuple[str, str]]
) -> None:
    request = custody_service_pb2.ExportPacketsRequest(**request_fields)  # type: ignore[arg-type]
    stub = bus._custody  # the raw call: the client's export builds valid requests only
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        _ = [r async for r in stub.ExportPackets(request, timeout=10)]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = packetbus.PacketbusError.from_rpc_error(caught.value)
    assert [(v.field, v.reason) for v in error.field_violations] == expected


# -- authorization: records.read on the kind, as ListRecords -------------------------------

WRITER = spiffe("writer-1")
READER = spiffe("reader-2")  # records.read on session summaries only
AUDITOR = spiffe("auditor-3")  # audit.export on every topic, no records.read
GRANTS = {
    WRITER: [("records.write", "*")],
    READER: [("records.read", "session_summary")],
    AUDITOR: [("audit.export", "*")],
}


issuer, guarded = guarded_fixtures(GRANTS, "export-records")


@pytest.mark.one_backend
async def test_exporting_a_kind_needs_records_read_on_it(
    guarded: RunningServer, issuer: Issuer
) -> None:
    target = f"127.0.0.1:{guarded.port}"
    async with (
        await client_as(target, issuer.token(WRITER)) as writer,
        await client_as(target, issuer.token(READER)) as reader,
        await client_as(target, issuer.token(AUDITOR)) as auditor,
    ):
        put = await writer.put_record(
            contents_pb2.SessionSummary(label=unique("s"), date="2026-11-30"), origin="writer-1"
        )
        got = [p async for r in reader.export(record_kind=SESSION) for p in r.packets]
        assert got[-1].packet.tracking_id == put.record_id

        for client, principal in ((reader, READER), (auditor, AUDITOR)):
            with pytest.raises(packetbus.PacketbusError) as caught:
                _ = [r async for r in client.export(record_kind=SWARM)]
            assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
            assert caught.value.error_info is not None
            assert caught.value.error_info.metadata == {
                "permission": "records.read",
                "resource": "swarm_registry",
                "principal": principal,
            }
