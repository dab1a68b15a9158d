"""A client's mistake is INVALID_ARGUMENT naming the field, wherever the field is.

Each case here once surfaced as UNKNOWN or INTERNAL (or was stored): ids and
cursors in other scripts' digits or past 64 bits, timestamps and dates out of
range, integers Lua cannot hold, a derived packet over the packet limit, and
bytes that are not a request at all for health and reflection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

import packetbus
from packetbus.rich_status import status_in
from packetbus.v1 import (
    agent_service_pb2,
    agent_service_pb2_grpc,
    carcel_service_pb2,
    carcel_service_pb2_grpc,
    consumer_group_service_pb2,
    consumer_group_service_pb2_grpc,
    contents_pb2,
    context_service_pb2,
    context_service_pb2_grpc,
    custody_service_pb2,
    custody_service_pb2_grpc,
    packet_pb2,
    packet_service_pb2,
    packet_service_pb2_grpc,
    policy_service_pb2,
    policy_service_pb2_grpc,
    record_service_pb2,
    record_service_pb2_grpc,
    speech_act_pb2,
)
from tests._raw_pull import opened_pull
from tests.conftest import new_packet, unique

# Non-ASCII digits (int() and `\d` take them, Redis does not), numbers past 2^64-1,
# and the largest id, after which nothing can come.
BAD_CURSORS = [
    "0-\u0660",
    "\u0661\u0667\u0660\u0660-0",
    "18446744073709551616-0",
    "0-18446744073709551616",
    "18446744073709551615-18446744073709551615",
]


@pytest.fixture
async def channel(target: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(target) as ch:
        yield ch


def _violations(error: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    status = status_in(error.trailing_metadata())
    if status is None:
        return []
    detail = error_details_pb2.BadRequest()
    status.details[0].Unpack(detail)
    return [(v.field, v.reason) for v in detail.field_violations]


async def _refused(call: Awaitable[Any]) -> list[tuple[str, str]]:
    """The (field, reason) pairs of a call that must be INVALID_ARGUMENT."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    return _violations(caught.value)


async def _first(stream: Any) -> Any:
    async for response in stream:
        return response
    return None


@pytest.mark.parametrize("cursor", BAD_CURSORS)
async def test_bad_cursors_and_page_tokens_are_refused_by_field(
    channel: grpc.aio.Channel, topic: str, cursor: str
) -> None:
    packets = packet_service_pb2_grpc.PacketServiceStub(channel)
    groups = consumer_group_service_pb2_grpc.ConsumerGroupServiceStub(channel)
    agents = agent_service_pb2_grpc.AgentServiceStub(channel)
    contexts = context_service_pb2_grpc.ContextServiceStub(channel)
    carcel = carcel_service_pb2_grpc.CarcelServiceStub(channel)
    policy = policy_service_pb2_grpc.PolicyServiceStub(channel)

    subscribe = packets.Subscribe(
        packet_service_pb2.SubscribeRequest(topic=topic, after_cursor=cursor)
    )
    assert await _refused(_first(subscribe)) == [("after_cursor", "CURSOR_FORMAT")]
    create = groups.CreateConsumerGroup(
        consumer_group_service_pb2.CreateConsumerGroupRequest(
            topic=topic, name="g", after_cursor=cursor
        )
    )
    assert [f for f, _ in await _refused(create)] == ["after_cursor"]
    watch_agents = agents.WatchAgents(agent_service_pb2.WatchAgentsRequest(after_cursor=cursor))
    assert [f for f, _ in await _refused(_first(watch_agents))] == ["after_cursor"]
    watch_context = contexts.WatchContext(
        context_service_pb2.WatchContextRequest(scope="s", after_cursor=cursor)
    )
    assert [f for f, _ in await _refused(_first(watch_context))] == ["after_cursor"]
    listing = carcel.ListCarcelEntries(
        carcel_service_pb2.ListCarcelEntriesRequest(page_token=f"{topic} {cursor}")
    )
    assert [f for f, _ in await _refused(listing)] == ["page_token"]
    held = policy.ListHeldPackets(
        policy_service_pb2.ListHeldPacketsRequest(page_token=f"{topic} {cursor}")
    )
    assert [f for f, _ in await _refused(held)] == ["page_token"]
    for call in (
        carcel.GetCarcelEntry(carcel_service_pb2.GetCarcelEntryRequest(topic=topic, id=cursor)),
        carcel.RequeueCarcelEntry(
            carcel_service_pb2.RequeueCarcelEntryRequest(topic=topic, id=cursor)
        ),
    ):
        assert [f for f, _ in await _refused(call)] == ["id"]
    purge = carcel.PurgeCarcelEntries(
        carcel_service_pb2.PurgeCarcelEntriesRequest(topic=topic, ids=[cursor])
    )
    assert [f for f, _ in await _refused(purge)] == ["ids[0]"]


@pytest.mark.parametrize("cursor", BAD_CURSORS)
async def test_bad_delivery_ids_fail_alone_in_unary_settlements(
    client: packetbus.Client, channel: grpc.aio.Channel, topic: str, cursor: str
) -> None:
    await client.create_consumer_group(topic, "g")
    groups = consumer_group_service_pb2_grpc.ConsumerGroupServiceStub(channel)
    bad = f"{cursor}:1"
    fine = "1700000000000-0:1"  # well formed, never delivered
    ack = await groups.Acknowledge(
        consumer_group_service_pb2.AcknowledgeRequest(
            topic=topic, group="g", delivery_ids=[bad, fine]
        )
    )
    nack = await groups.Nack(
        consumer_group_service_pb2.NackRequest(
            topic=topic,
            group="g",
            nacks=[
                consumer_group_service_pb2.Nacked(delivery_id=bad),
                consumer_group_service_pb2.Nacked(delivery_id=fine),
            ],
        )
    )
    extend = await groups.ExtendLeases(
        consumer_group_service_pb2.ExtendLeasesRequest(
            topic=topic, group="g", delivery_ids=[bad, fine]
        )
    )
    for response in (ack, nack, extend):
        assert [r.status.code for r in response.results] == [
            code_pb2.INVALID_ARGUMENT,
            code_pb2.NOT_FOUND,
        ]
        # The bad field is named in a google.rpc.BadRequest, as everywhere.
        assert _violations_of(response.results[0].status) == [("delivery_id", "DELIVERY_ID")]
    # A nack delay over the ack deadline (30 s by default), by field too.
    late = await groups.Nack(
        consumer_group_service_pb2.NackRequest(
            topic=topic,
            group="g",
            nacks=[consumer_group_service_pb2.Nacked(delivery_id=fine, delay_seconds=31)],
        )
    )
    [result] = late.results
    assert result.status.code == code_pb2.INVALID_ARGUMENT
    assert _violations_of(result.status) == [("delay_seconds", "RANGE")]


def _violations_of(status: Any) -> list[tuple[str, str]]:
    [detail] = status.details
    bad = error_details_pb2.BadRequest()
    assert detail.Unpack(bad)
    return [(v.field, v.reason) for v in bad.field_violations]


async def test_a_bad_id_on_a_pull_stream_fails_alone_and_the_stream_goes_on(
    client: packetbus.Client, channel: grpc.aio.Channel, topic: str
) -> None:
    await client.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
    groups = consumer_group_service_pb2_grpc.ConsumerGroupServiceStub(channel)
    stream, requests = opened_pull(groups, topic)
    await requests.put(
        consumer_group_service_pb2.PullRequest(
            ack_ids=[f"{c}:1" for c in BAD_CURSORS],
            extend_ids=["0-\u0660:1"],
            nacks=[consumer_group_service_pb2.Nacked(delivery_id="18446744073709551616-0:1")],
        )
    )
    await client.dispatch(new_packet(topic))
    settled: list[int] = []
    named: list[list[tuple[str, str]]] = []
    acked = False
    async with asyncio.timeout(20):
        async for response in stream:
            settled += [r.status.code for r in response.settled]
            named += [
                _violations_of(r.status)
                for r in response.settled
                if r.status.code == code_pb2.INVALID_ARGUMENT
            ]
            for delivery in response.deliveries:
                await requests.put(
                    consumer_group_service_pb2.PullRequest(ack_ids=[delivery.delivery_id])
                )
            if len(settled) == len(BAD_CURSORS) + 3:
                acked = True
                break
    await requests.put(None)
    stream.cancel()
    assert acked
    assert settled == [code_pb2.INVALID_ARGUMENT] * (len(BAD_CURSORS) + 2) + [code_pb2.OK]
    assert named == [[("delivery_id", "DELIVERY_ID")]] * (len(BAD_CURSORS) + 2)


async def test_a_second_subscription_on_a_pull_stream_is_invalid_argument_while_it_answers(
    client: packetbus.Client, channel: grpc.aio.Channel, topic: str
) -> None:
    # The first request settles (a malformed id: an answer to write) and the second
    # names a subscription again: the refusal must not race that write (it once
    # ended the stream INTERNAL "Internal error from Core", an ERROR in the log).
    await client.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
    groups = consumer_group_service_pb2_grpc.ConsumerGroupServiceStub(channel)
    request = consumer_group_service_pb2.PullRequest(
        subscription=consumer_group_service_pb2.PullSubscription(
            topic=topic, group="g", consumer="c-1"
        ),
        ack_ids=["0x10", "0-\u0660:1"],
    )

    async def pull() -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            async for _response in groups.Pull(iter([request, request])):
                pass
        return failure.value.code()

    # Concurrent streams, so some refusals meet their answer's write.
    async with asyncio.timeout(20):
        codes = await asyncio.gather(*(pull() for _ in range(40)))
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * 40


async def test_a_malformed_message_on_a_pull_stream_is_invalid_argument_while_it_answers(
    client: packetbus.Client, channel: grpc.aio.Channel, topic: str
) -> None:
    # As above, with bytes that are no PullRequest as the second message: the
    # settler task reads it, and its refusal must not race the handler's write of
    # the first request's answer (an abort from the settler's task could).
    await client.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
    pull_raw = channel.stream_stream(
        "/packetbus.v1.ConsumerGroupService/Pull",
        request_serializer=None,
        response_deserializer=consumer_group_service_pb2.PullResponse.FromString,
    )
    first = consumer_group_service_pb2.PullRequest(
        subscription=consumer_group_service_pb2.PullSubscription(
            topic=topic, group="g", consumer="c-1"
        ),
        ack_ids=["0x10", "0-\u0660:1"],
    ).SerializeToString()

    async def pull() -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            async for _response in pull_raw(iter([first, b"\xff\xff\xff"])):
                pass
        return failure.value.code(), failure.value.details() or ""

    async with asyncio.timeout(20):
        ends = await asyncio.gather(*(pull() for _ in range(40)))
    assert {code for code, _ in ends} == {grpc.StatusCode.INVALID_ARGUMENT}
    assert all("not a valid packetbus.v1.PullRequest" in details for _, details in ends)


@pytest.mark.parametrize(
    ("field", "seconds", "nanos"),
    [
        ("since", 0, -1),
        ("until", 0, 1_000_000_000),
        ("since", -62135596801, 0),
        ("until", 253402300800, 0),
    ],
)
async def test_export_timestamps_out_of_range_are_refused(
    channel: grpc.aio.Channel, field: str, seconds: int, nanos: int
) -> None:
    request = custody_service_pb2.ExportPacketsRequest()
    getattr(request, field).seconds = seconds
    getattr(request, field).nanos = nanos
    stub = custody_service_pb2_grpc.CustodyServiceStub(channel)
    assert await _refused(_first(stub.ExportPackets(request))) == [(field, "TIMESTAMP_RANGE")]


@pytest.mark.parametrize("version", [2**63 - 1, 2**53, -1])
async def test_expected_versions_lua_cannot_hold_are_refused(
    channel: grpc.aio.Channel, version: int
) -> None:
    stub = context_service_pb2_grpc.ContextServiceStub(channel)
    header = context_service_pb2.PutContextHeader(
        scope="s",
        name=unique("doc"),
        expected_version=version,
        size=0,
        sha256=bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        author="tester-1",
    )
    put = stub.PutContext(iter([context_service_pb2.PutContextRequest(header=header)]))
    assert await _refused(put) == [("header.expected_version", "RANGE")]
    delete = stub.DeleteContext(
        context_service_pb2.DeleteContextRequest(scope="s", name="d", expected_version=version)
    )
    assert await _refused(delete) == [("expected_version", "RANGE")]


@pytest.mark.parametrize(
    ("date", "reason"),
    [
        ("2026-13-45", "DATE_RANGE"),
        ("2026-02-30", "DATE_RANGE"),
        ("\u0662\u0660\u0662\u0666-\u0660\u0661-\u0660\u0661", "DATE_FORMAT"),
        ("\uff12\uff10\uff12\uff16-01-01", "DATE_FORMAT"),
    ],
)
async def test_records_refuse_dates_that_are_not_calendar_dates(
    channel: grpc.aio.Channel, date: str, reason: str
) -> None:
    stub = record_service_pb2_grpc.RecordServiceStub(channel)
    summary = packetbus.fill_defaults(
        packet_pb2.Packet(
            origin="tester-1",
            topic="records",
            speech_act=speech_act_pb2.SPEECH_ACT_INFORM,
            session_summary=contents_pb2.SessionSummary(label=unique("s"), date=date),
        )
    )
    put = stub.PutRecord(record_service_pb2.PutRecordRequest(packet=summary))
    assert await _refused(put) == [("packet.session_summary.date", reason)]
    listed = stub.ListRecords(
        record_service_pb2.ListRecordsRequest(
            kind=record_service_pb2.RECORD_KIND_SESSION_SUMMARY,
            page_token="\u0661\u0667:00000000-0000-0000-0000-000000000000",
        )
    )
    assert [f for f, _ in await _refused(listed)] == ["page_token"]


async def test_an_escalation_over_the_packet_limit_is_the_callers_to_split(
    client: packetbus.Client,
) -> None:
    task = unique("task")
    ids = []
    for i in range(2):
        finding = contents_pb2.Finding(
            task_id=task, id=f"f{i}", claim="x" * 600_000, confidence=0.5
        )
        await client.post_finding(finding, origin="tester-1")
        ids.append(f"f{i}")
    await client.escalate(task, ids[:1], reason="one fits", origin="tester-1")
    with pytest.raises(packetbus.PacketbusError) as too_large:
        await client.escalate(task, ids, reason="two do not", origin="tester-1")
    assert too_large.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.reason) for v in too_large.value.field_violations] == [
        ("finding_ids", "ESCALATION_TOO_LARGE")
    ]


async def test_health_and_reflection_refuse_undecodable_bytes_and_list_works(
    channel: grpc.aio.Channel,
) -> None:
    raw = b"\x18N\x07aG\xe4"  # not a message of any kind
    for method, streams in (
        ("/grpc.health.v1.Health/Check", False),
        ("/grpc.health.v1.Health/Watch", True),
        ("/grpc.health.v1.Health/List", False),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", True),
        ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", True),
    ):
        if method.endswith("ServerReflectionInfo"):
            call: Any = _first(channel.stream_stream(method)(iter([raw])))
        elif streams:
            call = _first(channel.unary_stream(method)(raw))
        else:
            call = channel.unary_unary(method)(raw)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method

    health = health_pb2_grpc.HealthStub(channel)
    listed = await health.List(health_pb2.HealthListRequest(), timeout=5)
    assert listed.statuses[""].status == health_pb2.HealthCheckResponse.SERVING
    assert (
        listed.statuses["packetbus.v1.PacketService"].status
        == health_pb2.HealthCheckResponse.SERVING
    )


@pytest.mark.parametrize(
    ("result", "summary", "field", "reason"),
    [
        ({"blob": "x" * 1_100_000}, "", "result", "RESULT_TOO_LARGE"),
        ({}, "s" * 1_100_000, "summary", "RESULT_TOO_LARGE"),
        (
            {"deep": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]},
            "",
            "result",
            "NESTING_DEPTH",
        ),
    ],
)
async def test_task_results_are_bounded_like_packets(
    client: packetbus.Client, result: dict[str, Any], summary: str, field: str, reason: str
) -> None:
    queue = client.task_queue(unique("q"))
    await queue.post(contents_pb2.Task(id="t-1"), origin="tester-1")
    claimed = await queue.claim("worker-1")
    assert claimed is not None
    with pytest.raises(packetbus.PacketbusError) as refused:
        await claimed.complete(result, summary=summary)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.reason) for v in refused.value.field_violations] == [(field, reason)]
    assert await queue.results("t-1") == []  # nothing kept
    await claimed.complete({"ok": True})  # the claim still holds: a fixed result goes in


@pytest.mark.parametrize("token", ["other.topic 1-0", "a 1-0", " 1-0"])
async def test_a_page_token_of_another_topic_is_invalid_for_a_topics_listing(
    channel: grpc.aio.Channel, token: str
) -> None:
    # A carcel or held-packet token names the topic it stopped in; one naming another
    # topic (from another listing) once answered an empty page, or restarted it.
    topic = unique("tok")
    carcel = carcel_service_pb2_grpc.CarcelServiceStub(channel)
    policy = policy_service_pb2_grpc.PolicyServiceStub(channel)
    calls = [
        carcel.ListCarcelEntries(
            carcel_service_pb2.ListCarcelEntriesRequest(topic=topic, page_token=token)
        ),
        policy.ListHeldPackets(
            policy_service_pb2.ListHeldPacketsRequest(topic=topic, page_token=token)
        ),
    ]
    for call in calls:
        assert await _refused(call) == [("page_token", "PAGE_TOKEN")]
