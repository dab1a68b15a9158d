"""Nothing the client hands out hangs after its owner closed: settlements, calls,
streams, inbox requests and background tasks resolve or fail at once (CANCELLED)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

import packetbus
from packetbus import _consumer, _workers
from packetbus._inbox import INBOX_GROUP
from packetbus.v1 import packet_service_pb2, packet_service_pb2_grpc
from tests.conftest import free_port, new_packet, unique

# Every wait here is bounded: a hang fails the test in seconds, not at the suite's end.
_PROMPT = 5.0


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What asyncio reports about this test's futures and tasks ("Future exception was
    never retrieved", "Task was destroyed but it is pending"); asserted empty. What
    earlier tests left behind (collected first, or alive when this one starts) is not
    this test's, and goes to the usual handler."""
    gc.collect()
    loop = asyncio.get_running_loop()
    earlier = weakref.WeakSet(asyncio.all_tasks(loop))
    errors: list[dict[str, Any]] = []

    def report(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("task") in earlier:
            loop.default_exception_handler(context)
        else:
            errors.append(context)

    loop.set_exception_handler(report)
    yield errors
    loop.set_exception_handler(None)


def _quiet(errors: list[dict[str, Any]]) -> None:
    gc.collect()  # futures and tasks dropped unretrieved report when collected
    assert [e.get("message") for e in errors] == []


async def _deliveries(
    client: packetbus.Client, topic: str, group: str, n: int
) -> tuple[list[_consumer.Delivery], _consumer.Consumer]:
    """`n` deliveries taken in a consume block that has exited (nothing settled)."""
    async with client.consume(topic, group, consumer="c") as consumer:
        taken: list[_consumer.Delivery] = []
        async with asyncio.timeout(_PROMPT):
            async for delivery in consumer:
                taken.append(delivery)
                if len(taken) == n:
                    break
    return taken, consumer


async def test_settling_after_the_consume_block_exited_is_sent_by_unary_calls(
    client: packetbus.Client, topic: str, loop_errors: list[dict[str, Any]]
) -> None:
    await client.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
    await client.dispatch_batch([new_packet(topic) for _ in range(4)])
    (acked, nacked, released, extended), consumer = await _deliveries(client, topic, "g", 4)
    async with asyncio.timeout(_PROMPT):
        [a] = await acked.ack()
        [n] = await nacked.nack(reason="later")
        [r] = await consumer.release(released)
        [e] = await extended.extend()
        with pytest.raises(packetbus.PacketbusError) as unknown:
            await consumer.ack("1-0:1")
    assert [x.status.code for x in (a, n, r, e)] == [0, 0, 0, 0]
    assert unknown.value.code == grpc.StatusCode.NOT_FOUND
    # The server took them: the nacked and released ones come back, the others do not.
    back = {}
    async with client.consume(topic, "g", consumer="d") as again:
        async with asyncio.timeout(_PROMPT):
            async for delivery in again:
                back[delivery.packet.packet.tracking_id] = delivery.delivery_count
                delivery.ack()
                if len(back) == 2:
                    break
    assert back == {
        nacked.packet.packet.tracking_id: 2,
        released.packet.packet.tracking_id: 1,
    }
    assert (await client.get_consumer_group(topic, "g")).outstanding == 1  # `extended`
    _quiet(loop_errors)


async def test_settling_before_iterating_or_after_the_stream_failed_does_not_hang(
    client: packetbus.Client, topic: str, loop_errors: list[dict[str, Any]]
) -> None:
    async with client.consume(topic, "nobody", consumer="c") as consumer:
        async with asyncio.timeout(_PROMPT):
            with pytest.raises(packetbus.PacketbusError) as early:
                await consumer.ack("1-0:1")  # no stream opened yet
            assert early.value.code == grpc.StatusCode.NOT_FOUND
            with pytest.raises(packetbus.PacketbusError) as failed:
                await anext(consumer)  # the group does not exist: the stream fails
            assert failed.value.code == grpc.StatusCode.NOT_FOUND
            with pytest.raises(packetbus.PacketbusError) as after:
                await consumer.nack("1-0:1")
            assert after.value.code == grpc.StatusCode.NOT_FOUND
    _quiet(loop_errors)


async def test_a_closed_inbox_ends_iteration_and_fails_waiting_requests_at_once(
    client: packetbus.Client, loop_errors: list[dict[str, Any]]
) -> None:
    inbox = await client.inbox(unique("agent"))
    asking = asyncio.create_task(
        inbox.request(unique("nobody"), new_packet("x"), timeout=60), name="asking"
    )
    async with asyncio.timeout(_PROMPT):
        await asyncio.sleep(0)  # the request runs up to dispatching: it waits for a reply
        assert inbox._waiting
        await inbox.close()
        with pytest.raises(packetbus.PacketbusError) as waiting:
            await asking
        assert waiting.value.code == grpc.StatusCode.CANCELLED
        assert [d async for d in inbox] == []
        with pytest.raises(packetbus.PacketbusError) as later:
            await inbox.request("someone", new_packet("x"))
        assert later.value.code == grpc.StatusCode.CANCELLED
    _quiet(loop_errors)


async def test_an_inbox_whose_stream_ended_stops_its_iterator(
    client: packetbus.Client, loop_errors: list[dict[str, Any]]
) -> None:
    agent = unique("agent")
    async with await client.inbox(agent) as inbox:
        await client.delete_consumer_group(packetbus.inbox_topic(agent), INBOX_GROUP)
        async with asyncio.timeout(_PROMPT):
            with pytest.raises(packetbus.PacketbusError) as gone:
                await anext(inbox)
            assert gone.value.code == grpc.StatusCode.NOT_FOUND
            with pytest.raises(packetbus.PacketbusError):
                await anext(inbox)  # again: the same error, not a wait
            with pytest.raises(packetbus.PacketbusError) as asking:
                await inbox.request("someone", new_packet("x"), timeout=60)
            assert asking.value.code == grpc.StatusCode.NOT_FOUND  # no reply could come
    _quiet(loop_errors)


async def _drain(stream: AsyncIterator[Any]) -> None:
    async for _ in stream:
        pass


def _calls_after_close(
    client: packetbus.Client, topic: str
) -> dict[str, Callable[[], Awaitable[Any]]]:
    return {
        "dispatch": lambda: client.dispatch(new_packet(topic)),
        "dispatch_batch": lambda: client.dispatch_batch([new_packet(topic)]),
        "unary": lambda: client.server_info(),
        "health": lambda: client.health(),
        "subscribe": lambda: anext(client.subscribe(topic, start=packetbus.EARLIEST)),
        "export": lambda: _drain(client.export_packets(topic)),
        "consume": lambda: anext(client.consume(topic, "g", consumer="c")),
        "consumer ack": lambda: client.consume(topic, "g", consumer="c").ack("1-0:1"),
        "watch tasks": lambda: anext(client.task_queue("q").watch()),
        "watch agents": lambda: anext(client.watch_agents()),
        "watch context": lambda: anext(client.watch_context("s")),
        "get context": lambda: client.get_context("s", "n"),
        "put context": lambda: client.put_context("s", "n", b"x"),
        "inbox": lambda: client.inbox("a"),
        "flush": lambda: client.flush(),
    }


async def test_after_the_client_closes_every_call_and_stream_fails_at_once(
    target: str, topic: str, loop_errors: list[dict[str, Any]]
) -> None:
    client = await packetbus.Client.connect(target)
    await client.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
    await client.dispatch(new_packet(topic))
    [delivery], _ = await _deliveries(client, topic, "g", 1)
    subscription = client.subscribe(topic, start=packetbus.EARLIEST)
    assert (await anext(subscription)).packet.topic == topic
    await client.close()
    outcomes: dict[str, str] = {}
    for name, call in _calls_after_close(client, topic).items():
        try:
            async with asyncio.timeout(_PROMPT):
                await call()
            outcomes[name] = "ok"
        except packetbus.PacketbusError as exc:
            outcomes[name] = exc.code.name
    assert outcomes == dict.fromkeys(outcomes, "CANCELLED") | {"flush": "ok"}
    async with asyncio.timeout(_PROMPT):
        with pytest.raises(packetbus.PacketbusError) as settled:
            await delivery.ack()
        assert settled.value.code == grpc.StatusCode.CANCELLED
        with pytest.raises(packetbus.PacketbusError) as following:
            await anext(subscription)
        assert following.value.code == grpc.StatusCode.CANCELLED
    await client.close()  # again: nothing to do
    _quiet(loop_errors)


async def test_a_dispatch_waiting_for_room_when_the_client_closes_fails_at_once(
    target: str, topic: str, loop_errors: list[dict[str, Any]]
) -> None:
    config = packetbus.ClientConfig(
        batching=packetbus.BatchSettings(max_outstanding_packets=1, max_latency=0.5)
    )
    client = await packetbus.Client.connect(target, config=config)
    first = asyncio.create_task(client.dispatch(new_packet(topic)))
    second = asyncio.create_task(client.dispatch(new_packet(topic)))
    async with asyncio.timeout(_PROMPT):
        # Both submitted; the first is sent at once (nothing was in flight) and the
        # second waits for room until the first's result, a round trip away.
        for _ in range(3):
            await asyncio.sleep(0)
        await client.close()
        assert (await first).topic == topic  # queued before close: sent by close
        with pytest.raises(packetbus.PacketbusError) as waiting:
            await second
        assert waiting.value.code == grpc.StatusCode.CANCELLED
    _quiet(loop_errors)


async def test_a_live_agent_stops_heartbeating_when_its_client_closes(
    target: str, loop_errors: list[dict[str, Any]]
) -> None:
    client = await packetbus.Client.connect(target)
    me = client.agent(unique("agent"), ttl=1)
    await me.__aenter__()
    beat = me._task
    assert beat is not None
    await client.close()
    async with asyncio.timeout(_PROMPT):
        await asyncio.wait({beat})  # ends by itself at its next heartbeat
        with pytest.raises(packetbus.PacketbusError) as leaving:
            await me.__aexit__(None, None, None)
    assert leaving.value.code == grpc.StatusCode.CANCELLED
    assert beat.exception() is None
    _quiet(loop_errors)


def test_a_closed_sync_client_fails_at_once(target: str) -> None:
    sync = packetbus.SyncClient.connect(target)
    subscription = sync.subscribe(unique("topic"))
    sync.close()
    with pytest.raises(packetbus.PacketbusError) as calls:
        sync.server_info()
    assert calls.value.code == grpc.StatusCode.CANCELLED
    with pytest.raises(packetbus.PacketbusError):
        next(subscription)
    sync.close()  # again: nothing to do


async def test_a_consumer_open_when_its_client_closes_fails_at_once(
    target: str, topic: str, loop_errors: list[dict[str, Any]]
) -> None:
    client = await packetbus.Client.connect(target)
    await client.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
    await client.dispatch_batch([new_packet(topic) for _ in range(2)])
    consumer = client.consume(topic, "g", consumer="c")
    async with asyncio.timeout(_PROMPT):
        first = await anext(consumer)
        await first.ack()  # the stream carries it
        await client.close()
        with pytest.raises(packetbus.PacketbusError) as iterating:
            async for _ in consumer:
                pass
        assert iterating.value.code == grpc.StatusCode.CANCELLED
        await consumer.close()
    _quiet(loop_errors)


async def test_a_connect_cancelled_while_waiting_leaves_nothing_unretrieved(
    loop_errors: list[dict[str, Any]],
) -> None:
    # Ctrl-C in a CLI command waiting for an absent server cancels Client.connect;
    # its wait for the channels once ended as "_GatheringFuture exception was never
    # retrieved" with a traceback on stderr.
    nobody = f"127.0.0.1:{free_port()}"
    connecting = asyncio.create_task(packetbus.Client.connect(nobody, timeout=30))
    await asyncio.sleep(0.5)  # well inside the 30 s wait for a server that is not there
    assert not connecting.done()
    connecting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(connecting, _PROMPT)
    for _ in range(3):
        await asyncio.sleep(0.05)
        _quiet(loop_errors)


async def test_a_connect_cancelled_while_it_asks_for_a_worker_closes_its_channels(
    target: str, loop_errors: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past channel_ready, connect asks the server which worker to use (_workers);
    # cancelled there, it once left the channels it had opened open, with nothing
    # that could close them. The server's answer is held back to cancel meanwhile.
    asked = asyncio.Event()
    opened: list[grpc.aio.Channel] = []
    real = _workers.worker_channels

    async def late(shared: list[grpc.aio.Channel], *args: Any) -> Any:
        opened.extend(shared)
        asked.set()
        await asyncio.sleep(30)
        return await real(shared, *args)

    monkeypatch.setattr(_workers, "worker_channels", late)
    connecting = asyncio.create_task(packetbus.Client.connect(target, timeout=30))
    await asyncio.wait_for(asked.wait(), _PROMPT)
    connecting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(connecting, _PROMPT)
    assert len(opened) == 1
    for channel in opened:
        stub = packet_service_pb2_grpc.PacketServiceStub(channel)
        with pytest.raises(grpc.aio.UsageError, match="closed"):
            await stub.GetServerInfo(packet_service_pb2.GetServerInfoRequest(), timeout=_PROMPT)
    _quiet(loop_errors)
