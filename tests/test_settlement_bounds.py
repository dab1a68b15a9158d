"""Every request that names deliveries or carcel entries names at most
Limits.max_batch_packets (1000) of them, and the clients split more into several.

Pull stream requests and PurgeCarcelEntries took any number: one request of 300,000
malformed ids cost the server 8.4 s of CPU, parsing and answering each. Now an
oversized request is refused INVALID_ARGUMENT (BATCH_TOO_LARGE) before any id is
read, and nothing in it is settled or purged, as Acknowledge, Nack and ExtendLeases
already refused more per call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2
from hypothesis import given
from hypothesis import strategies as st

import packetbus
from packetbus._settling import SETTLEMENTS_PER_REQUEST, Outgoing
from packetbus.rich_status import status_in
from packetbus.v1 import (
    carcel_service_pb2,
    carcel_service_pb2_grpc,
    consumer_group_service_pb2,
    consumer_group_service_pb2_grpc,
)
from tests._raw_pull import opened_pull
from tests.conftest import new_packet, unique

MOST = 1000  # the server's default Limits.max_batch_packets
NEVER_DELIVERED = [f"1700000000000-{i}:1" for i in range(2 * MOST)]  # well formed


def _violations(error: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    status = status_in(error.trailing_metadata())
    assert status is not None
    detail = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(detail)
    return [(v.field, v.reason) for v in detail.field_violations]


@pytest.fixture
async def groups(target: str) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(target) as channel:
        yield consumer_group_service_pb2_grpc.ConsumerGroupServiceStub(channel)


async def _leased(client: packetbus.Client, topic: str, groups: Any) -> tuple[Any, str]:
    """A Pull stream (its request queue) holding the lease of one packet's delivery."""
    await client.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
    await client.dispatch(new_packet(topic))
    stream, requests = opened_pull(groups, topic)
    async with asyncio.timeout(10):
        async for response in stream:
            if response.deliveries:
                return (stream, requests), response.deliveries[0].delivery_id
    raise AssertionError("no delivery")


@pytest.mark.parametrize(
    ("acks", "nacks", "extends", "named"),
    [
        (MOST + 1, 0, 0, ["ack_ids"]),
        (0, 0, MOST + 1, ["extend_ids"]),
        (400, 400, 201, ["ack_ids", "nacks", "extend_ids"]),
    ],
)
async def test_a_pull_request_of_more_settlements_than_a_batch_ends_the_stream_unsettled(
    client: packetbus.Client,
    groups: Any,
    topic: str,
    acks: int,
    nacks: int,
    extends: int,
    named: list[str],
) -> None:
    (stream, requests), delivery_id = await _leased(client, topic, groups)
    ids = [delivery_id, *NEVER_DELIVERED]
    await requests.put(
        consumer_group_service_pb2.PullRequest(
            ack_ids=ids[:acks],
            nacks=[consumer_group_service_pb2.Nacked(delivery_id=i) for i in ids[:nacks]],
            extend_ids=ids[:extends],
        )
    )
    settled: list[Any] = []

    async def read() -> None:
        async with asyncio.timeout(10):
            async for response in stream:
                settled.extend(response.settled)

    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await read()
    await requests.put(None)
    assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(ended.value) == [(field, "BATCH_TOO_LARGE") for field in named]
    assert settled == []
    # Nothing in it was settled: the delivery is still leased, not acked or nacked.
    assert (await client.get_consumer_group(topic, "g")).outstanding == 1


async def test_a_pull_request_of_a_full_batch_is_settled(
    client: packetbus.Client, groups: Any, topic: str
) -> None:
    (stream, requests), delivery_id = await _leased(client, topic, groups)
    await requests.put(
        consumer_group_service_pb2.PullRequest(ack_ids=[delivery_id, *NEVER_DELIVERED[: MOST - 1]])
    )
    codes: list[int] = []
    async with asyncio.timeout(20):
        async for response in stream:
            codes += [r.status.code for r in response.settled]
            if len(codes) == MOST:
                break
    await requests.put(None)
    stream.cancel()
    assert codes == [code_pb2.OK] + [code_pb2.NOT_FOUND] * (MOST - 1)
    assert (await client.get_consumer_group(topic, "g")).outstanding == 0


@pytest.mark.parametrize("method", ["Acknowledge", "ExtendLeases", "Nack"])
async def test_unary_settlements_of_more_than_a_batch_are_refused_unsettled(
    client: packetbus.Client, groups: Any, topic: str, method: str
) -> None:
    (stream, requests), delivery_id = await _leased(client, topic, groups)
    ids = [delivery_id, *NEVER_DELIVERED[:MOST]]
    if method == "Nack":
        field = "nacks"
        request: Any = consumer_group_service_pb2.NackRequest(
            topic=topic,
            group="g",
            nacks=[consumer_group_service_pb2.Nacked(delivery_id=i) for i in ids],
        )
    else:
        field = "delivery_ids"
        request = getattr(consumer_group_service_pb2, f"{method}Request")(
            topic=topic, group="g", delivery_ids=ids
        )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await getattr(groups, method)(request)
    await requests.put(None)
    stream.cancel()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(refused.value) == [(field, "BATCH_TOO_LARGE")]
    assert (await client.get_consumer_group(topic, "g")).outstanding == 1


async def _carceled(client: packetbus.Client, topic: str) -> str:
    """The carcel entry id of a packet nacked once in a group of one attempt."""
    await client.create_consumer_group(
        topic, "g", start=packetbus.EARLIEST, max_delivery_attempts=1
    )
    await client.dispatch(new_packet(topic))
    async with client.consume(topic, "g", consumer="picky") as consumer:
        async with asyncio.timeout(10):
            [nacked] = await (await anext(consumer)).nack(reason="cannot parse it")
    assert nacked.carcel_id
    return str(nacked.carcel_id)


async def test_a_purge_of_more_entries_than_a_batch_is_refused_and_purges_none(
    client: packetbus.Client, target: str, topic: str
) -> None:
    entry = await _carceled(client, topic)
    async with grpc.aio.insecure_channel(target) as channel:
        carcel = carcel_service_pb2_grpc.CarcelServiceStub(channel)
        too_many = [entry] + [i.split(":")[0] for i in NEVER_DELIVERED[:MOST]]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await carcel.PurgeCarcelEntries(
                carcel_service_pb2.PurgeCarcelEntriesRequest(topic=topic, ids=too_many)
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _violations(refused.value) == [("ids", "BATCH_TOO_LARGE")]
        assert [e.id async for e in client.carcel_entries(topic)] == [entry]
        # A full batch is taken, and purges the one entry it names that exists.
        purged = await carcel.PurgeCarcelEntries(
            carcel_service_pb2.PurgeCarcelEntriesRequest(topic=topic, ids=too_many[:MOST])
        )
    assert purged.purged == 1
    assert [e.id async for e in client.carcel_entries(topic)] == []


async def test_the_client_purges_more_entries_than_a_batch_in_several_calls(
    client: packetbus.Client, topic: str
) -> None:
    entry = await _carceled(client, topic)
    ids = [i.split(":")[0] for i in NEVER_DELIVERED[: MOST + 500]] + [entry]
    assert await client.purge_carcel(topic, ids) == 1
    assert [e.id async for e in client.carcel_entries(topic)] == []


@pytest.mark.parametrize("closed", [False, True], ids=["on_the_stream", "unary_after_close"])
async def test_a_consumer_acks_more_deliveries_than_a_request_holds(
    client: packetbus.Client, closed: bool
) -> None:
    # 1,500 deliveries acked in one ack(): on the Pull stream as 2 requests, and
    # after the consumer closed as 2 Acknowledge calls. Sent as one, the server
    # refuses it (and a stream would resend it, refused again, forever).
    topic = unique("bounds")
    count = SETTLEMENTS_PER_REQUEST + 500
    await client.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
    for start in range(0, count, 500):
        await client.dispatch_batch([new_packet(topic) for _ in range(start, start + 500)])
    deliveries: list[Any] = []
    async with client.consume(
        topic, "g", consumer="c-1", max_outstanding_packets=count
    ) as consumer:
        async with asyncio.timeout(30):
            while len(deliveries) < count:
                deliveries.append(await anext(consumer))
        if not closed:
            async with asyncio.timeout(30):
                results = await consumer.ack(*deliveries)
    if closed:
        async with asyncio.timeout(30):
            results = await consumer.ack(*deliveries)
    assert len(results) == count
    assert {r.status.code for r in results} == {code_pb2.OK}
    assert (await client.get_consumer_group(topic, "g")).outstanding == 0


def _ids(prefix: str) -> Any:
    return st.lists(st.integers(0, 10**6).map(lambda i: f"{prefix}{i}"), max_size=60)


@given(acks=_ids("a"), nack_ids=_ids("n"), extends=_ids("e"), most=st.integers(1, 25))
def test_outgoing_settlements_are_split_in_order_into_requests_of_at_most_most(
    acks: list[str], nack_ids: list[str], extends: list[str], most: int
) -> None:
    nacks = [consumer_group_service_pb2.Nacked(delivery_id=i, release=True) for i in nack_ids]
    requests = Outgoing(acks=acks, nacks=nacks, extends=extends).requests(most)
    sizes = [len(r.ack_ids) + len(r.nacks) + len(r.extend_ids) for r in requests]
    assert all(1 <= size <= most for size in sizes)
    # Every request but the last is full: no more requests than needed.
    assert sizes[:-1] == [most] * (len(sizes) - 1)
    assert [i for r in requests for i in r.ack_ids] == acks
    assert [n for r in requests for n in r.nacks] == nacks
    assert [i for r in requests for i in r.extend_ids] == extends
