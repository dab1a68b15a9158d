"""The client retries only what the server answers the same when repeated, and says
whether a call that failed may have taken effect (PacketbusError.outcome_unknown).

The faults are real: a TCP proxy (tests/_proxy.py) between the client and a real
server throws away the server's reply after the request was handled, as a lost
connection does; server-side effects are counted in the store and at the proxy.
"""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import random
import time
from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as redis_asyncio
from grpc_health.v1 import health_pb2

import packetbus
from packetbus import _retry_policy
from packetbus import v1 as packetbus_v1
from packetbus.v1 import contents_pb2, task_service_pb2
from packetbus_server import RunningServer
from tests._proxy import FaultyProxy
from tests.conftest import free_port, new_packet, unique


class _Switch(random.Random):
    """The proxy's dice: no reply is dropped until `drop_next` or `drop_all`."""

    def __init__(self) -> None:
        super().__init__(0)
        self.left = 0

    def drop_next(self, count: int = 1) -> None:
        self.left = count

    def random(self) -> float:
        if self.left > 0:
            self.left -= 1
            return 0.0
        return 1.0


@pytest.fixture
async def proxy(server: RunningServer) -> AsyncIterator[tuple[FaultyProxy, _Switch]]:
    switch = _Switch()
    faulty = FaultyProxy(server.port, drop_reply_rate=0.5)
    faulty._rng = switch  # the proxy drops a reply when its dice say so: these do
    await faulty.start()
    yield faulty, switch
    await faulty.stop()


@pytest.fixture
async def via_proxy(proxy: tuple[FaultyProxy, _Switch]) -> AsyncIterator[packetbus.Client]:
    faulty, _ = proxy
    config = packetbus.ClientConfig(
        target=f"127.0.0.1:{faulty.port}",
        retry=packetbus.RetrySettings(initial_backoff=0.02, max_backoff=0.1),
    )
    async with await packetbus.Client.connect(config=config, timeout=10) as c:
        await c.server_info()  # connected: the next reply the proxy sees is a call's
        yield c


def test_every_rpc_has_a_retry_policy() -> None:
    # Every service of every generated module (not the policy's own list, so a new
    # proto file with a service the policy does not know fails here too).
    services = [
        service
        for module in pkgutil.iter_modules(packetbus_v1.__path__)
        if module.name.endswith("_pb2")
        for service in importlib.import_module(
            f"packetbus.v1.{module.name}"
        ).DESCRIPTOR.services_by_name.values()
    ]
    services += health_pb2.DESCRIPTOR.services_by_name.values()
    assert {s.full_name for s in services} == {s.full_name for s in _retry_policy.SERVICES}
    unary = {
        f"{s.name}.{m.name}"
        for s in services
        for m in s.methods
        if not m.client_streaming and not m.server_streaming
    }
    assert unary == set(_retry_policy.POLICY)
    # Every request type names one RPC, so a request tells the policy of its call.
    assert len(_retry_policy._BY_REQUEST) == len(unary)


async def test_lost_reply_to_a_dispatch_is_retried_and_answers_the_original(
    via_proxy: packetbus.Client,
    client: packetbus.Client,
    proxy: tuple[FaultyProxy, _Switch],
    raw_redis: redis_asyncio.Redis,
    topic: str,
) -> None:
    faulty, switch = proxy
    packet = new_packet(topic)
    switch.drop_next()
    receipt = await via_proxy.dispatch(packet, timeout=10)
    assert faulty.stats.dropped_replies == 1
    assert faulty.stats.connections == 2  # retried, on a new connection
    assert receipt == (await client.get_packet(packet.tracking_id)).receipt
    assert await raw_redis.xlen(f"pb:{{{topic}}}:log") == 1


async def test_dispatches_ending_in_errors_say_outcome_unknown_and_resending_stores_once(
    via_proxy: packetbus.Client,
    client: packetbus.Client,
    proxy: tuple[FaultyProxy, _Switch],
    raw_redis: redis_asyncio.Redis,
    topic: str,
) -> None:
    faulty, switch = proxy
    packets = [new_packet(topic, ttl_seconds=300) for _ in range(20)]
    # Connected first: a connection an earlier test's faults cut may sit in grpc's
    # reconnect backoff (about 1 s), and these 1 s calls would then never be sent.
    await via_proxy.dispatch(new_packet(unique("warm")), timeout=30)
    switch.drop_next(10**9)  # every reply from now on is lost
    # 3 s each: on a loaded machine (CI, -n 3) 1 s once let no request reach the server.
    outcomes = await asyncio.gather(
        *(via_proxy.dispatch(p, timeout=3.0) for p in packets), return_exceptions=True
    )
    switch.drop_next(0)
    errors = [o for o in outcomes if isinstance(o, packetbus.PacketbusError)]
    assert len(errors) == len(packets), outcomes
    assert {e.code for e in errors} <= {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
    # Each is outcome unknown, except a dispatch that never reached the server within
    # its time (a loaded machine): that one is known not applied, and must not be stored.
    assert any(e.outcome_unknown for e in errors), outcomes
    known_not_applied = {
        p.tracking_id
        for p, o in zip(packets, outcomes, strict=True)
        if isinstance(o, packetbus.PacketbusError) and not o.outcome_unknown
    }

    # Some of them were in fact stored (the request got through, its reply did not).
    found = await asyncio.gather(
        *(client.get_packet(p.tracking_id) for p in packets), return_exceptions=True
    )
    stored_before = {
        p.tracking_id: f.receipt
        for p, f in zip(packets, found, strict=True)
        if isinstance(f, packetbus.StoredPacket)
    }
    missing = [f for f in found if not isinstance(f, packetbus.StoredPacket)]
    assert all(
        isinstance(f, packetbus.PacketbusError) and f.code == grpc.StatusCode.NOT_FOUND
        for f in missing
    )
    assert stored_before, "no request got through before its reply was lost"
    assert not known_not_applied & stored_before.keys(), "stored yet said not applied"

    # What to do: send the same packets again; the stored ones answer as before.
    receipts = await asyncio.gather(*(client.dispatch(p) for p in packets))
    for p, receipt in zip(packets, receipts, strict=True):
        if p.tracking_id in stored_before:
            assert receipt == stored_before[p.tracking_id]
    assert await raw_redis.xlen(f"pb:{{{topic}}}:log") == len(packets)
    assert faulty.stats.dropped_replies >= 1


async def test_a_call_that_never_reached_a_server_is_known_not_applied(topic: str) -> None:
    config = packetbus.ClientConfig(
        target=f"127.0.0.1:{free_port()}",
        retry=packetbus.RetrySettings(initial_backoff=0.02, max_backoff=0.05),
    )
    async with await packetbus.Client.connect(config=config, timeout=None) as nowhere:
        with pytest.raises(packetbus.PacketbusError) as caught:
            await nowhere.dispatch_batch([new_packet(topic)], timeout=0.5)
        assert caught.value.code in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
        assert not caught.value.outcome_unknown
        # A call that is not safe to repeat is still retried while nothing was sent.
        with pytest.raises(packetbus.PacketbusError) as caught:
            await nowhere.deregister_agent("nobody", timeout=0.5)
        assert caught.value.code in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
        assert not caught.value.outcome_unknown


async def test_a_definite_refusal_is_known_not_applied(
    via_proxy: packetbus.Client, topic: str
) -> None:
    original = new_packet(topic)
    await via_proxy.dispatch(original)
    changed = packetbus.Packet.FromString(original.SerializeToString())
    changed.origin = "someone-else"
    with pytest.raises(packetbus.PacketbusError) as caught:
        await via_proxy.dispatch(changed)
    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert not caught.value.outcome_unknown


async def test_a_lost_reply_to_a_deregistration_is_not_retried(
    via_proxy: packetbus.Client,
    client: packetbus.Client,
    proxy: tuple[FaultyProxy, _Switch],
) -> None:
    faulty, switch = proxy
    agent = unique("agent")
    await client.register_agent(agent, role="worker")
    switch.drop_next()
    with pytest.raises(packetbus.PacketbusError) as caught:
        await via_proxy.deregister_agent(agent, timeout=10)
    # Not retried (a retry would answer NOT_FOUND for what this call did), and said so.
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.outcome_unknown
    assert faulty.stats.connections == 1
    assert agent not in [a.id for a in await client.list_agents()]


@pytest.mark.parametrize("settle", ["fail", "release"])
async def test_a_lost_reply_to_a_task_failure_or_release_is_retried_and_answers_ok(
    via_proxy: packetbus.Client,
    client: packetbus.Client,
    proxy: tuple[FaultyProxy, _Switch],
    settle: str,
) -> None:
    faulty, switch = proxy
    queue = via_proxy.task_queue(unique("queue"))
    await queue.post(contents_pb2.Task(id="t-1", description="x"), origin="poster-1")
    claimed = await queue.claim("worker-1")
    assert claimed is not None
    switch.drop_next()
    # The same token and reason again answer the first outcome, so the client retries
    # and the caller is told OK for what the server recorded once.
    if settle == "fail":
        await claimed.fail("broke", timeout=10)
    else:
        await claimed.release("busy", timeout=10)
    assert faulty.stats.dropped_replies == 1
    assert faulty.stats.connections == 2  # retried, on a new connection
    state = await client.task_queue(queue.name).get("t-1")
    assert state.failures == (1 if settle == "fail" else 0)
    assert state.status == task_service_pb2.TASK_STATUS_QUEUED


@pytest.mark.parametrize("settle", ["ack", "nack", "extend"])
async def test_a_lost_reply_to_a_settlement_outside_the_stream_is_retried(
    via_proxy: packetbus.Client,
    client: packetbus.Client,
    proxy: tuple[FaultyProxy, _Switch],
    topic: str,
    settle: str,
) -> None:
    faulty, switch = proxy
    await client.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
    await client.dispatch(new_packet(topic))
    async with via_proxy.consume(topic, "g", consumer="c") as consumer:
        async with asyncio.timeout(10):
            delivery = await anext(consumer)
    # The consumer is closed: the settlement goes out as a unary call, which the
    # server answers the same when repeated, so the client retries it as
    # client.acknowledge would, and the caller is told OK for what was done once.
    connections = faulty.stats.connections
    switch.drop_next()
    if settle == "ack":
        [result] = await delivery.ack()
    elif settle == "nack":
        [result] = await delivery.nack(delay_seconds=30)
    else:
        [result] = await delivery.extend()
    assert result.status.code == 0
    assert faulty.stats.dropped_replies == 1
    assert faulty.stats.connections == connections + 1  # retried, on a new connection
    group = await client.get_consumer_group(topic, "g")
    assert group.outstanding == (0 if settle == "ack" else 1)


async def test_a_settlement_the_consumer_closed_on_unconfirmed_says_outcome_unknown(
    via_proxy: packetbus.Client,
    client: packetbus.Client,
    proxy: tuple[FaultyProxy, _Switch],
    topic: str,
) -> None:
    faulty, _ = proxy
    await client.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
    await client.dispatch(new_packet(topic))
    consumer = via_proxy.consume(topic, "g", consumer="c")
    async with asyncio.timeout(10):
        delivery = await anext(consumer)
    faulty.freeze()  # the server's answers stop coming, the connection stays up
    try:
        settling = delivery.ack()
        await consumer.close(timeout=1)
        with pytest.raises(packetbus.PacketbusError) as caught:
            await settling
    finally:
        faulty.thaw()
    # The ack went out with no answer: it may have been recorded.
    assert caught.value.code == grpc.StatusCode.CANCELLED
    assert caught.value.outcome_unknown


async def test_a_lost_reply_to_a_context_put_is_retried_under_its_upload_id(
    via_proxy: packetbus.Client,
    client: packetbus.Client,
    proxy: tuple[FaultyProxy, _Switch],
) -> None:
    faulty, switch = proxy
    scope = unique("scope")
    switch.drop_next()
    # Bytes can be sent again, and the client gives the upload an id of its own, so
    # a put whose reply was lost is sent again and answers the first commit.
    document = await via_proxy.put_context(scope, "plan", b"the plan", author="a-1", timeout=10)
    assert faulty.stats.dropped_replies == 1
    assert faulty.stats.connections == 2
    assert document.version == 1
    stored = await client.get_context(scope, "plan")
    assert (stored.document.version, stored.data) == (1, b"the plan")


def test_reads_are_what_the_protos_declare_for_the_client_and_the_eviction_guard() -> None:
    # One declaration (idempotency_level = NO_SIDE_EFFECTS) makes a method a read for
    # the client's retries and for the server's guard that refuses writes.
    from packetbus_server._eviction import read_only

    reads = set()
    for service in _retry_policy.SERVICES:
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            unary = not method.client_streaming and not method.server_streaming
            if unary:
                policy = _retry_policy.POLICY[f"{service.name}.{method.name}"]
                assert (policy is _retry_policy.Retry.READ) == read_only(path), path
            if read_only(path) and service.full_name.startswith("packetbus."):
                reads.add(f"{service.name}.{method.name}")
    assert len(reads) == 37
    assert {"PacketService.GetPacket", "PacketService.Subscribe", "TaskService.WatchTasks"} <= reads
    assert not reads & {
        "PacketService.Dispatch",
        "ConsumerGroupService.Pull",
        "TaskService.ClaimTask",
        "ContextService.PutContext",
    }
    assert not read_only("/packetbus.v1.PacketService/NoSuchMethod")


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


def test_a_client_stream_cut_while_writing_counts_as_a_lost_connection() -> None:
    # grpc.aio turns a write that fails because the stream ended under it into its own
    # INTERNAL "Internal error from Core" (grpc/grpc#36066): seen when a proxy dropped
    # a PutContext's connection mid-upload. It is retried as UNAVAILABLE is.
    local = _rpc_error(grpc.StatusCode.INTERNAL, "Internal error from Core")
    assert _retry_policy.broken_while_writing(local)
    assert _retry_policy.maybe_applied(local)
    # A server's own INTERNAL is not a broken connection: never retried.
    server = _rpc_error(grpc.StatusCode.INTERNAL, "store failed: something")
    assert not _retry_policy.broken_while_writing(server)
    assert not _retry_policy.broken_while_writing(
        _rpc_error(grpc.StatusCode.UNAVAILABLE, "Internal error from Core")
    )


async def test_the_retry_loop_sends_a_cut_client_stream_again() -> None:
    from packetbus._config import RetrySettings
    from packetbus._retrying import retried

    attempts: list[float] = []

    async def call(left: float) -> str:
        attempts.append(left)
        if len(attempts) == 1:
            raise _rpc_error(grpc.StatusCode.INTERNAL, "Internal error from Core")
        return "stored"

    deadline = time.monotonic() + 10
    assert await retried(call, deadline, _retry_policy.Retry.IDEMPOTENT, RetrySettings()) == (
        "stored"
    )
    assert len(attempts) == 2

    async def server_fault(left: float) -> str:
        raise _rpc_error(grpc.StatusCode.INTERNAL, "a server's own fault")

    with pytest.raises(packetbus.PacketbusError) as caught:
        await retried(server_fault, deadline, _retry_policy.Retry.IDEMPOTENT, RetrySettings())
    assert caught.value.code == grpc.StatusCode.INTERNAL
