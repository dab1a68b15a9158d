"""ListTopics and ListTaskQueues page tokens never start from, or carry, a name
outside what the caller may list: a token (whose seal is no secret, so anyone can
make one) naming a name outside the request's prefix, or one the caller may not
read, is INVALID_ARGUMENT on page_token; a token the server gives names only what
the caller may read."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable

import grpc
import pytest
import redis.asyncio as redis_asyncio

import packetbus
from packetbus.v1 import (
    task_service_pb2,
    task_service_pb2_grpc,
    topic_service_pb2,
    topic_service_pb2_grpc,
)
from packetbus_server import RunningServer, _keys
from packetbus_server._page_tokens import seal
from packetbus_server._task_queues import MAX_INDEXED
from tests._identities import Issuer, _UnaryUnary, client_as, guarded_fixtures, spiffe
from tests.conftest import new_packet, unique

# About who may list what, not how the store behaves: one backend (see conftest).
pytestmark = pytest.mark.one_backend

ROOT = unique("tok")
ADMIN = spiffe("tokens-admin")
TEAM_A = spiffe("tokens-team-a")
GRANTS = {
    ADMIN: [("*", "*")],
    TEAM_A: [("tasks.read", f"{ROOT}.a.*"), ("topics.subscribe", f"{ROOT}.a.*")],
}

issuer, guarded = guarded_fixtures(GRANTS, "listing-tokens")

Lister = Callable[[grpc.aio.Channel, str, str], Awaitable[tuple[list[str], str]]]


async def _queues(channel: grpc.aio.Channel, prefix: str, token: str) -> tuple[list[str], str]:
    stub = task_service_pb2_grpc.TaskServiceStub(channel)
    request = task_service_pb2.ListTaskQueuesRequest(
        prefix=prefix, page_size=1000, page_token=token
    )
    page = await stub.ListTaskQueues(request, timeout=30)
    return [q.queue for q in page.queues], page.next_page_token


async def _topics(channel: grpc.aio.Channel, prefix: str, token: str) -> tuple[list[str], str]:
    stub = topic_service_pb2_grpc.TopicServiceStub(channel)
    request = topic_service_pb2.ListTopicsRequest(prefix=prefix, page_size=1, page_token=token)
    page = await stub.ListTopics(request, timeout=30)
    return [t.name for t in page.topics], page.next_page_token


LISTINGS = [("task_queues", _queues), ("topics", _topics)]


def _position(token: str) -> str:
    body = token.split(".")[2]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()


@pytest.fixture(scope="module")
async def names(guarded: RunningServer, issuer: Issuer) -> list[str]:
    """Queues and topics a.one, a.two (team A reads them) and b.one (it does not)."""
    made = [f"{ROOT}.a.one", f"{ROOT}.a.two", f"{ROOT}.b.one"]
    async with await client_as(f"127.0.0.1:{guarded.port}", issuer.token(ADMIN)) as admin:
        for name in made:
            await admin.task_queue(name).post(packetbus.Task(id="t"), origin="tokens-admin")
            await admin.dispatch_batch([new_packet(name)])
    return made


def _channel(guarded: RunningServer, token: str) -> grpc.aio.Channel:
    """A channel to `guarded` whose unary calls carry bearer `token`."""
    return grpc.aio.insecure_channel(f"127.0.0.1:{guarded.port}", interceptors=[_UnaryUnary(token)])


@pytest.mark.parametrize(("listing", "lister"), LISTINGS)
async def test_a_token_naming_a_name_outside_the_grant_or_prefix_is_refused(
    guarded: RunningServer, issuer: Issuer, names: list[str], listing: str, lister: Lister
) -> None:
    async with _channel(guarded, issuer.token(TEAM_A)) as channel:
        # A name team A may not read, under the prefix asked: refused, not listed after.
        outside_grant = seal(listing, (ROOT,), names[2][:-1])
        # A name outside the prefix asked (team A may read it).
        outside_prefix = seal(listing, (f"{ROOT}.a.t",), names[0])
        for prefix, token in ((ROOT, outside_grant), (f"{ROOT}.a.t", outside_prefix)):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await lister(channel, prefix, token)
            error = packetbus.PacketbusError.from_rpc_error(refused.value)
            assert error.code == grpc.StatusCode.INVALID_ARGUMENT
            assert [(v.field, v.reason) for v in error.field_violations] == [
                ("page_token", "PAGE_TOKEN")
            ]
        # The tokens the server gives are taken, and name what team A reads.
        seen, token = [], ""
        for _ in range(5):
            page, token = await lister(channel, ROOT, token)
            seen += page
            if not token:
                break
            assert _position(token) in names[:2]
        assert seen == names[:2]


async def test_a_queue_listing_cut_at_max_indexed_never_carries_an_unreadable_name(
    guarded: RunningServer,
    issuer: Issuer,
    names: list[str],
    raw_redis: redis_asyncio.Redis,
) -> None:
    # MAX_INDEXED + 1 queue names team A may not read, indexed (as a store may hold),
    # under the prefix it lists: a cut among them would end its page with a token
    # carrying one of them.
    hidden = [f"{ROOT}.a.s{i:05d}.hidden" for i in range(MAX_INDEXED + 1)]
    unreadable = [h.replace(".a.", ".b.", 1) for h in hidden]
    try:
        await raw_redis.zadd(_keys.QUEUES, dict.fromkeys(unreadable, 1))
        async with _channel(guarded, issuer.token(TEAM_A)) as channel:
            seen, token = [], ""
            for _ in range(5):
                page, token = await _queues(channel, ROOT, token)
                seen += page
                if not token:
                    break
                assert _position(token) in names[:2]
        assert seen == names[:2]
    finally:
        for start in range(0, len(unreadable), 1000):
            await raw_redis.zrem(_keys.QUEUES, *unreadable[start : start + 1000])
