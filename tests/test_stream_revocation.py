"""A stream is judged again while it runs (issue 14, items 2 and 3).

A Subscribe or a Pull stream is admitted once and may run for hours. A policy
reload that takes away what let it in, or the expiry of the credential it was
opened with, ends it before it sends anything more: PERMISSION_DENIED with the
same ErrorInfo the gate gives, or UNAUTHENTICATED (CREDENTIAL_EXPIRED), as the
next unary call would be refused. A reload that keeps the grant changes nothing.

Real server on loopback, real store, real Ed25519 JWTs (tests/_binding.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis_asyncio
from google.rpc import code_pb2

from packetbus import EARLIEST, Client, TokenFile
from packetbus.v1 import consumer_group_service_pb2 as groups_pb
from packetbus.v1 import packet_service_pb2, packet_service_pb2_grpc
from packetbus_server import RunningServer
from tests._binding import Caller, denied, packet_as, serve_bound, stored_nowhere
from tests._polling import until
from tests._principals import call_error_info
from tests.conftest import unique

# Identity, not storage: one backend (see conftest).
pytestmark = pytest.mark.one_backend

READER = "spiffe://example.org/agent/reader-1"
PUBLISHER = "spiffe://example.org/pub/publisher-1"

# The reader's grant is on `{topics}`; the publisher may always publish to jobs.*.
POLICY = """
[authorization]

[[authorization.principals]]
match = "spiffe://example.org/agent/*"
roles = ["reader"]

[[authorization.principals]]
match = "spiffe://example.org/pub/*"
roles = ["publisher"]

[authorization.roles.reader]
grants = [{{ permissions = ["topics.*", "groups.*"], resources = ["{topics}"] }}]

[authorization.roles.publisher]
grants = [{{ permissions = ["topics.publish"], resources = ["jobs.*"] }}]
"""

SUBSCRIBE_FROM_START = packet_service_pb2.START_POSITION_EARLIEST


async def _reload(srv: RunningServer, directory: Path, topics: str) -> None:
    _apply(srv, directory, POLICY.format(topics=topics))


def _apply(srv: RunningServer, directory: Path, policy: str) -> None:
    """Write `policy` as the server's policy file and reload it (it must load)."""
    (directory / "policy.toml").write_text(policy)
    assert srv.policy is not None
    srv.policy.reload_now()
    assert srv.policy.failure is None


async def _publish(publisher: Caller, topic: str) -> str:
    packet = packet_as(topic, "publisher-1")
    [result] = await publisher.dispatch(packet)
    assert result.HasField("receipt"), result
    return packet.tracking_id


def _open(srv: RunningServer, kind: str) -> int:
    assert srv.streams is not None
    return srv.streams.open_streams(kind)


async def _next(stream: AsyncIterator[Any]) -> Any:
    return await asyncio.wait_for(anext(stream), 10)


@pytest.fixture
async def server(
    redis_url: str, tmp_path: Path
) -> AsyncIterator[tuple[RunningServer, Path, Any, grpc.aio.Channel]]:
    srv, issuer = await serve_bound(redis_url, tmp_path, POLICY.format(topics="jobs.*"))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            yield srv, tmp_path, issuer, channel
    finally:
        await srv.stop(grace=0)


async def test_a_subscription_ends_when_a_reload_revokes_its_grant(
    server: tuple[RunningServer, Path, Any, grpc.aio.Channel],
) -> None:
    srv, directory, issuer, channel = server
    reader, publisher = Caller(channel, issuer, READER), Caller(channel, issuer, PUBLISHER)
    topic = unique("jobs.revoked")
    call = reader.packets.Subscribe(
        packet_service_pb2.SubscribeRequest(topic=topic, start_position=SUBSCRIBE_FROM_START),
        metadata=reader.metadata,
    )
    stream = aiter(call)
    first = await _publish(publisher, topic)
    assert [p.packet.tracking_id for p in (await _next(stream)).packets] == [first]

    await _reload(directory=directory, srv=srv, topics="jobs.kept-*")  # not this topic
    await _publish(publisher, topic)
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await _next(stream)  # the second packet is never delivered
    assert ended.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert call_error_info(ended.value) == denied(READER, "topics.subscribe", topic)


async def test_a_reload_that_keeps_the_grant_keeps_the_subscription(
    server: tuple[RunningServer, Path, Any, grpc.aio.Channel],
) -> None:
    srv, directory, issuer, channel = server
    reader, publisher = Caller(channel, issuer, READER), Caller(channel, issuer, PUBLISHER)
    topic = unique("jobs.kept")
    call = reader.packets.Subscribe(
        packet_service_pb2.SubscribeRequest(topic=topic, start_position=SUBSCRIBE_FROM_START),
        metadata=reader.metadata,
    )
    stream = aiter(call)
    await _publish(publisher, topic)
    await _next(stream)
    await _reload(directory=directory, srv=srv, topics="jobs.kept.*")
    second = await _publish(publisher, topic)
    assert [p.packet.tracking_id for p in (await _next(stream)).packets] == [second]
    call.cancel()


async def test_a_pull_ends_when_a_reload_revokes_its_grant(
    server: tuple[RunningServer, Path, Any, grpc.aio.Channel],
) -> None:
    srv, directory, issuer, channel = server
    reader, publisher = Caller(channel, issuer, READER), Caller(channel, issuer, PUBLISHER)
    topic = unique("jobs.pulled")
    await reader.groups.CreateConsumerGroup(
        groups_pb.CreateConsumerGroupRequest(
            topic=topic, name="workers", start_position=SUBSCRIBE_FROM_START
        ),
        metadata=reader.metadata,
    )
    first = await _publish(publisher, topic)
    outgoing: asyncio.Queue[groups_pb.PullRequest | None] = asyncio.Queue()
    subscription = groups_pb.PullSubscription(topic=topic, group="workers", consumer="reader-1")
    await outgoing.put(groups_pb.PullRequest(subscription=subscription))

    async def requests() -> AsyncIterator[groups_pb.PullRequest]:
        while (request := await outgoing.get()) is not None:
            yield request

    call = reader.groups.Pull(requests(), metadata=reader.metadata)
    stream = aiter(call)
    delivered = await _next(stream)
    assert [d.packet.packet.tracking_id for d in delivered.deliveries] == [first]

    await _reload(directory=directory, srv=srv, topics="jobs.kept-*")
    await _publish(publisher, topic)
    # Acking the first delivery is answered with a response: the stream ends first.
    await outgoing.put(groups_pb.PullRequest(ack_ids=[delivered.deliveries[0].delivery_id]))
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await _next(stream)
    assert ended.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert call_error_info(ended.value) == denied(READER, "topics.consume", topic)
    await outgoing.put(None)


async def test_a_subscription_ends_when_its_token_expires(
    server: tuple[RunningServer, Path, Any, grpc.aio.Channel],
) -> None:
    srv, _, issuer, channel = server
    publisher = Caller(channel, issuer, PUBLISHER)
    topic = unique("jobs.expiring")
    # exp 25 s ago: still good for the server's 30 s of leeway, about 5 s more.
    token = issuer.token(READER, lifetime_s=-25)
    call = packet_service_pb2_grpc.PacketServiceStub(channel).Subscribe(
        packet_service_pb2.SubscribeRequest(topic=topic, start_position=SUBSCRIBE_FROM_START),
        metadata=(("authorization", f"Bearer {token}"),),
    )
    stream = aiter(call)
    first = await _publish(publisher, topic)
    assert [p.packet.tracking_id for p in (await _next(stream)).packets] == [first]
    await asyncio.sleep(6)
    await _publish(publisher, topic)
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await _next(stream)
    assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert call_error_info(ended.value) == {"reason": "CREDENTIAL_EXPIRED", "principal": READER}
    assert token not in (ended.value.details() or "")
    await until(lambda: _open(srv, "subscribe") == 0, timeout=2)


async def test_a_client_with_a_renewed_token_file_keeps_its_subscription(
    server: tuple[RunningServer, Path, Any, grpc.aio.Channel],
) -> None:
    # The server ends the stream CREDENTIAL_EXPIRED; the client opens it again after
    # its last cursor, with the token the file holds now: no gap, no duplicate.
    srv, directory, issuer, channel = server
    publisher = Caller(channel, issuer, PUBLISHER)
    topic = unique("jobs.renewed")
    token_file = directory / "token"
    token_file.write_text(issuer.token(READER, lifetime_s=-25))  # good ~5 s more
    async with (
        await Client.connect(f"127.0.0.1:{srv.port}", token=TokenFile(token_file)) as client,
        client.subscribe(topic, start=EARLIEST) as subscription,
    ):
        first = await _publish(publisher, topic)
        assert (await asyncio.wait_for(anext(subscription), 10)).packet.tracking_id == first
        await asyncio.sleep(6)
        token_file.write_text(issuer.token(READER))  # renewed, as a sidecar would
        second = await _publish(publisher, topic)
        assert (await asyncio.wait_for(anext(subscription), 10)).packet.tracking_id == second


async def test_a_dispatch_stream_whose_token_expired_stores_no_further_batch(
    server: tuple[RunningServer, Path, Any, grpc.aio.Channel], raw_redis: redis_asyncio.Redis
) -> None:
    srv, _, issuer, channel = server
    topic = unique("jobs.expiring")
    # exp 25 s ago: still good for the server's 30 s of leeway, about 5 s more.
    token = issuer.token(PUBLISHER, lifetime_s=-25)
    stream = packet_service_pb2_grpc.PacketServiceStub(channel).DispatchStream(
        metadata=(("authorization", f"Bearer {token}"),), timeout=30
    )
    first = packet_as(topic, "publisher-1")
    await stream.write(packet_service_pb2.DispatchStreamRequest(batch_id=1, packets=[first]))
    answer = await asyncio.wait_for(stream.read(), 10)
    assert answer.batch_id == 1
    assert answer.dispatched.results[0].HasField("receipt")
    await asyncio.sleep(6)
    late_topic = unique("jobs.expired")
    late = packet_as(late_topic, "publisher-1")
    await stream.write(packet_service_pb2.DispatchStreamRequest(batch_id=2, packets=[late]))
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await asyncio.wait_for(stream.read(), 10)
    assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert call_error_info(ended.value) == {"reason": "CREDENTIAL_EXPIRED", "principal": PUBLISHER}
    # Refused before it was written, not written and then left unanswered.
    assert await stored_nowhere(raw_redis, late_topic, late.tracking_id)
    # Its slot is freed as it ends, not whenever its generators are collected.
    await until(lambda: _open(srv, "dispatch") == 0, timeout=2)


# The publisher's agent id is the policy's to say; it may act for helper-* agents.
MAPPED = """
[authorization]

[[authorization.principals]]
match = "spiffe://example.org/pub/*"
roles = ["publisher"]
agent_id = "{agent}"

[authorization.roles.publisher]
grants = [
  {{ permissions = ["topics.publish"], resources = ["jobs.*"] }},
  {{ permissions = ["agents.act_for"], resources = ["helper-*"] }},
]
"""


async def test_a_dispatch_stream_sends_as_the_agent_id_a_reload_maps_for_every_batch_after(
    server: tuple[RunningServer, Path, Any, grpc.aio.Channel], raw_redis: redis_asyncio.Redis
) -> None:
    # Each batch is served in a task of its own: the principal the reload maps anew
    # must hold for every later batch, not for the one batch that judged it again
    # (the others kept the agent id the stream opened with, and could send as it).
    srv, directory, issuer, channel = server
    _apply(srv, directory, MAPPED.format(agent="old-agent"))
    publisher = Caller(channel, issuer, PUBLISHER)
    stream = publisher.packets.DispatchStream(metadata=publisher.metadata, timeout=30)
    topic = unique("jobs.remapped")

    async def sent(batch_id: int, origin: str) -> packet_service_pb2.DispatchResult:
        batch = packet_service_pb2.DispatchStreamRequest(
            batch_id=batch_id, packets=[packet_as(topic, origin)]
        )
        await stream.write(batch)
        answer = await asyncio.wait_for(stream.read(), 10)
        assert isinstance(answer, packet_service_pb2.DispatchStreamResponse)
        assert answer.batch_id == batch_id
        [result] = answer.dispatched.results
        return result

    # Acting for a helper: still allowed once the agent id is mapped anew.
    assert (await sent(1, "helper-1")).HasField("receipt")
    _apply(srv, directory, MAPPED.format(agent="new-agent"))
    refusals = [await sent(i, "old-agent") for i in (2, 3, 4)]
    assert [r.error.code for r in refusals] == [code_pb2.PERMISSION_DENIED] * 3
    assert (await sent(5, "new-agent")).HasField("receipt")
    # Another reload that keeps the mapping: what the stream did stays allowed, judged
    # as the agent id it is now (as the old one, acting as new-agent was refused).
    _apply(srv, directory, MAPPED.format(agent="new-agent") + "\n# v3\n")
    assert (await sent(6, "new-agent")).HasField("receipt")
    stream.cancel()
    assert await raw_redis.xlen(f"pb:{{{topic}}}:log") == 3


async def test_a_dispatch_stream_opened_before_a_reload_sends_its_first_batch_as_it_maps(
    server: tuple[RunningServer, Path, Any, grpc.aio.Channel], raw_redis: redis_asyncio.Redis
) -> None:
    # Nothing judged on the stream before the reload: its principal, mapped when it
    # was admitted, is mapped again by the policy in force all the same.
    srv, directory, issuer, channel = server
    _apply(srv, directory, MAPPED.format(agent="old-agent"))
    publisher = Caller(channel, issuer, PUBLISHER)
    stream = publisher.packets.DispatchStream(metadata=publisher.metadata, timeout=30)
    await until(lambda: _open(srv, "dispatch") == 1)  # admitted, as mapped then
    _apply(srv, directory, MAPPED.format(agent="new-agent"))
    topic = unique("jobs.remapped")
    batch = packet_service_pb2.DispatchStreamRequest(
        batch_id=1, packets=[packet_as(topic, "old-agent")]
    )
    await stream.write(batch)
    answer = await asyncio.wait_for(stream.read(), 10)
    assert isinstance(answer, packet_service_pb2.DispatchStreamResponse)
    assert [r.error.code for r in answer.dispatched.results] == [code_pb2.PERMISSION_DENIED]
    stream.cancel()
    assert await raw_redis.exists(f"pb:{{{topic}}}:log") == 0
