"""Consumer groups: competing consumers, leases, redelivery, the carcel and custody hops."""

from __future__ import annotations

import asyncio
import collections
import collections.abc
import gc
import os
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis_asyncio

import packetbus
from packetbus import _custody
from packetbus.rich_status import error_info
from packetbus.v1 import (
    consumer_group_service_pb2,
    consumer_group_service_pb2_grpc,
    custody_pb2,
)
from packetbus_server import RunningServer
from packetbus_server._group_store import GroupStore
from tests._polling import until
from tests._proxy import FaultyProxy
from tests.conftest import new_packet, unique

REPO = Path(__file__).resolve().parent.parent


async def _dispatch(client: packetbus.Client, topic: str, n: int) -> list[str]:
    packets = [new_packet(topic) for _ in range(n)]
    for offset in range(0, n, 200):
        results = await client.dispatch_batch(packets[offset : offset + 200])
        assert all(r.WhichOneof("outcome") == "receipt" for r in results)
    return [p.tracking_id for p in packets]


def _reason(status: Any) -> str:
    """The ErrorInfo reason of a per-item google.rpc.Status ("" without one)."""
    info = error_info(status)
    return "" if info is None else info.reason


def _actions(stored: packetbus.StoredPacket) -> list[tuple[str, int, str]]:
    out = []
    for entry in stored.packet.chain_of_custody:
        record = custody_pb2.CustodyRecord.FromString(entry.record)
        out.append((record.action, record.attempt, record.counterpart))
    return out


async def _verified_actions(client: packetbus.Client, tracking_id: str) -> list[str]:
    report = await client.verify_custody(tracking_id)
    assert report.verified, report
    stored = await client.get_packet(tracking_id)
    return [a for a, _, _ in _actions(stored)]


@pytest.mark.slow
async def test_three_consumers_ack_every_packet_once_and_a_killed_ones_500_come_back(
    client: packetbus.Client, target: str, topic: str
) -> None:
    await client.create_consumer_group(
        topic, "workers", start=packetbus.EARLIEST, ack_deadline_seconds=2
    )
    # DESIGN.md section 5, scenario 4, at its stated size: the killed consumer holds 500.
    sent = await _dispatch(client, topic, 2000)

    # The third consumer, in its own process: takes 500 deliveries, then is killed.
    # (Its output is read without blocking: this test's server runs on this event loop.)
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests._holding_consumer",
        target,
        topic,
        "workers",
        "doomed",
        "500",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    held: set[str] = set()
    try:
        assert holder.stdout is not None
        async with asyncio.timeout(30):
            while (line := (await holder.stdout.readline()).decode().strip()) != "HOLDING":
                assert line, "the holding consumer exited early"
                held.add(line.split()[1])
        assert len(held) == 500
    finally:
        holder.send_signal(signal.SIGKILL)
        await holder.wait()

    deliveries: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
    acked: collections.Counter[str] = collections.Counter()

    all_acked = asyncio.Event()

    async def work(name: str) -> None:
        async with client.consume(topic, "workers", consumer=name) as consumer:
            async for batch in consumer.batches():
                for d in batch:
                    deliveries[d.packet.packet.tracking_id].append((name, d.delivery_count))
                for result in await consumer.ack(*batch):
                    assert result.status.code == 0
                for d in batch:
                    acked[d.packet.packet.tracking_id] += 1
                if len(acked) == len(sent):
                    all_acked.set()

    workers = [asyncio.create_task(work(name)) for name in ("alpha", "beta")]
    try:
        async with asyncio.timeout(30):
            await all_acked.wait()
        await asyncio.sleep(0.5)  # time for a wrongful second delivery to show up
    finally:
        for task in workers:
            task.cancel()
        for outcome in await asyncio.gather(*workers, return_exceptions=True):
            assert outcome is None or isinstance(outcome, asyncio.CancelledError), outcome

    assert set(acked) == set(sent)
    assert set(acked.values()) == {1}, "a packet was acked more than once"
    # Never delivered to two live consumers: each packet reached them exactly once.
    assert all(len(d) == 1 for d in deliveries.values())
    assert {tid for tid, d in deliveries.items() if d[0][1] == 2} == held
    assert all(d[0][1] == 1 for tid, d in deliveries.items() if tid not in held)
    assert {name for d in deliveries.values() for name, _ in d} == {"alpha", "beta"}

    group = await client.get_consumer_group(topic, "workers")
    assert group.outstanding == 0
    # A redelivered packet's chain shows both deliveries and the ack, and verifies.
    redelivered = sorted(held)[0]
    stored = await client.get_packet(redelivered)
    hops = _actions(stored)[2:]
    assert [(a, n) for a, n, _ in hops] == [("delivered", 1), ("delivered", 2), ("acked", 2)]
    assert hops[0][2] == "group:workers consumer:doomed"
    assert await _verified_actions(client, redelivered) == [
        "received",
        "dispatched",
        "delivered",
        "delivered",
        "acked",
    ]


async def test_a_poison_packet_goes_to_the_carcel_after_five_nacks_and_requeue_delivers_it_once_more(
    client: packetbus.Client, topic: str
) -> None:
    await client.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
    [poison] = await _dispatch(client, topic, 1)
    results = []
    async with client.consume(topic, "g", consumer="picky") as consumer:
        async with asyncio.timeout(20):
            async for delivery in consumer:
                assert delivery.packet.packet.tracking_id == poison
                [result] = await delivery.nack(reason="cannot parse it")
                results.append((delivery.delivery_count, result.carcel_id))
                if result.carcel_id:
                    break
        assert [count for count, _ in results] == [1, 2, 3, 4, 5]
        carcel_id = results[-1][1]
        assert all(not c for _, c in results[:-1])
        # Never delivered again.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.5):
                await anext(consumer)

    entries = [e async for e in client.carcel_entries(topic)]
    assert [e.id for e in entries] == [carcel_id]
    entry = entries[0]
    assert (entry.reason, entry.detail, entry.source, entry.delivery_count) == (
        "max delivery attempts",
        "cannot parse it",
        "group:g",
        5,
    )
    assert entry.packet.packet.tracking_id == poison
    assert [e.id async for e in client.carcel_entries(reason="max delivery attempts")].count(
        carcel_id
    ) == 1
    assert [e.id async for e in client.carcel_entries(topic, reason="other")] == []
    chain = [a for a, _, _ in _actions(entry.packet)]
    assert chain == [
        "received",
        "dispatched",
        *["delivered", "nacked"] * 4,
        "delivered",
        "carceled",
    ]

    await client.requeue_carcel_entry(topic, carcel_id)
    assert [e async for e in client.carcel_entries(topic)] == []
    with pytest.raises(packetbus.PacketbusError) as gone:
        await client.requeue_carcel_entry(topic, carcel_id)
    assert gone.value.code == grpc.StatusCode.NOT_FOUND

    async with client.consume(topic, "g", consumer="fixed") as consumer:
        async with asyncio.timeout(10):
            delivery = await anext(consumer)
        assert delivery.packet.packet.tracking_id == poison
        assert delivery.delivery_count == 1
        await delivery.ack()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.5):
                await anext(consumer)

    actions = await _verified_actions(client, poison)
    assert actions == [
        "received",
        "dispatched",
        *["delivered", "nacked"] * 4,
        "delivered",
        "carceled",
        "requeued",
        "delivered",
        "acked",
    ]


async def test_an_expired_lease_goes_to_another_consumer_and_the_late_ack_is_refused(
    client: packetbus.Client, topic: str
) -> None:
    await client.create_consumer_group(topic, "g", start=packetbus.EARLIEST, ack_deadline_seconds=1)
    [tid] = await _dispatch(client, topic, 1)
    async with (
        client.consume(topic, "g", consumer="slow") as slow,
        client.consume(topic, "g", consumer="fast") as fast,
    ):
        async with asyncio.timeout(10):
            first = await anext(slow)
            # Extending keeps the lease: nobody else gets it meanwhile.
            for _ in range(3):
                await asyncio.sleep(0.5)
                [extended] = await first.extend()
                assert extended.lease_expires_at.ToMilliseconds() > 0
            second = await anext(fast)
        assert second.packet.packet.tracking_id == tid
        assert (first.delivery_count, second.delivery_count) == (1, 2)
        with pytest.raises(packetbus.PacketbusError) as late:
            await first.ack()
        assert late.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert late.value.error_info is not None
        assert late.value.error_info.reason == "LEASE_RAN_OUT"
        await second.ack()
        # The superseded delivery once the packet is settled: not outstanding.
        [stale] = await client.acknowledge(topic, "g", [first.delivery_id])
        assert stale.status.code == grpc.StatusCode.NOT_FOUND.value[0]
        assert _reason(stale.status) == "NOT_OUTSTANDING"
        # Acking the same delivery again (a retry) is answered as done, not twice.
        [again] = await client.acknowledge(topic, "g", [second.delivery_id])
        assert again.status.code == 0
    stored = await client.get_packet(tid)
    assert [a for a, _, _ in _actions(stored)].count("acked") == 1


async def test_settling_outside_the_stream_and_bad_requests(
    client: packetbus.Client, topic: str, raw_redis: redis_asyncio.Redis
) -> None:
    group = await client.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
    assert (group.ack_deadline_seconds, group.max_delivery_attempts) == (30, 5)
    same = await client.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
    assert same.created_at == group.created_at
    with pytest.raises(packetbus.PacketbusError) as other:
        await client.create_consumer_group(topic, "g", ack_deadline_seconds=60)
    assert other.value.code == grpc.StatusCode.ALREADY_EXISTS

    with pytest.raises(packetbus.PacketbusError) as bad:
        await client.create_consumer_group(
            "bad topic", "no:colons", ack_deadline_seconds=9999, max_delivery_attempts=1000
        )
    assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in bad.value.field_violations} == {
        "topic",
        "name",
        "ack_deadline_seconds",
        "max_delivery_attempts",
    }

    with pytest.raises(packetbus.PacketbusError) as missing:
        async with client.consume(topic, "nobody", consumer="c") as consumer:
            await anext(consumer)
    assert missing.value.code == grpc.StatusCode.NOT_FOUND

    tids = await _dispatch(client, topic, 3)
    async with client.consume(topic, "g", consumer="c") as consumer:
        async with asyncio.timeout(10):
            batch = []
            async for d in consumer:
                batch.append(d)
                if len(batch) == 3:
                    break
    assert sorted(d.packet.packet.tracking_id for d in batch) == sorted(tids)
    # Closing the consumer did not settle them; another client can.
    results = await client.acknowledge(topic, "g", [batch[0].delivery_id, "not-an-id", "1-0:1"])
    assert [r.status.code for r in results] == [
        0,
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
        grpc.StatusCode.NOT_FOUND.value[0],
    ]
    [nacked] = await client.nack(topic, "g", [batch[1].delivery_id], delay_seconds=31)
    assert nacked.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    [extended] = await client.extend_leases(topic, "g", [batch[2].delivery_id])
    assert extended.status.code == 0
    assert (await client.get_consumer_group(topic, "g")).outstanding == 2

    assert [g.name for g in await client.list_consumer_groups(topic)] == ["g"]
    assert await client.delete_consumer_group(topic, "g") is True
    assert await client.delete_consumer_group(topic, "g") is False
    with pytest.raises(packetbus.PacketbusError) as gone:
        await client.get_consumer_group(topic, "g")
    assert gone.value.code == grpc.StatusCode.NOT_FOUND
    # The topic's packets stay; with no group left its log expires again.
    assert await raw_redis.xlen(f"pb:{{{topic}}}:log") == 3
    assert await raw_redis.pttl(f"pb:{{{topic}}}:log") > 0


async def test_a_nack_with_delay_comes_back_after_it(client: packetbus.Client, topic: str) -> None:
    await client.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
    await _dispatch(client, topic, 1)
    async with client.consume(topic, "g", consumer="c") as consumer:
        async with asyncio.timeout(10):
            first = await anext(consumer)
            await first.nack(delay_seconds=2)
            started = asyncio.get_running_loop().time()
            second = await anext(consumer)
            waited = asyncio.get_running_loop().time() - started
        assert second.delivery_count == 2
        assert waited >= 1.5
        await second.ack()


async def test_the_log_of_a_topic_with_groups_does_not_expire(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis
) -> None:
    topic = unique("short")
    await client.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
    await client.dispatch_batch([new_packet(topic, ttl_seconds=60)])
    assert await raw_redis.pttl(f"pb:{{{topic}}}:log") == -1
    # The custody hops live as long as the packet.
    async with client.consume(topic, "g", consumer="c") as consumer:
        delivery = await anext(consumer)
        await delivery.ack()
    tid = delivery.packet.packet.tracking_id
    ttl = await raw_redis.pttl(f"pb:{{{topic}}}:hops:{tid}")
    assert 50_000 < ttl <= 60_000
    assert _custody.DELIVERED in [a for a, _, _ in _actions(await client.get_packet(tid))]


async def test_deliveries_a_closing_consumer_never_handed_out_come_back_uncounted(
    client: packetbus.Client, topic: str
) -> None:
    await client.create_consumer_group(
        topic, "g", start=packetbus.EARLIEST, max_delivery_attempts=1
    )
    sent = await _dispatch(client, topic, 5)
    async with client.consume(topic, "g", consumer="quitter") as consumer:
        first = await anext(consumer)
        await first.ack()
    # The other four were received with the first, never handed out, and released.
    async with client.consume(topic, "g", consumer="stayer") as consumer:
        async with asyncio.timeout(10):
            rest = [await anext(consumer) for _ in range(4)]
        await consumer.ack(*rest)
    assert sorted(d.packet.packet.tracking_id for d in [first, *rest]) == sorted(sent)
    assert {d.delivery_count for d in rest} == {1}
    assert [e async for e in client.carcel_entries(topic)] == []
    actions = await _verified_actions(client, rest[0].packet.packet.tracking_id)
    # Released once, or more if the closing consumer was sent it again before the
    # server saw it close: never counted either way.
    middle = actions[2:-2]
    assert actions[:2] == ["received", "dispatched"]
    assert actions[-2:] == ["delivered", "acked"]
    assert middle
    assert middle == ["delivered", "released"] * (len(middle) // 2)


async def test_a_stream_that_releases_does_not_take_the_packet_straight_back(
    client: packetbus.Client, target: str, topic: str
) -> None:
    """A release is for deliveries the consumer will not look at (it is closing): the
    stream pauses its pulls briefly, so its half-close is read before the packet is
    leased back to it. Pulling at once made a closing consumer and the server pass
    a packet back and forth, two custody hops a round, until the half-close."""
    await client.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
    [tracking_id] = await _dispatch(client, topic, 1)
    requests: asyncio.Queue[consumer_group_service_pb2.PullRequest | None] = asyncio.Queue()

    async def send() -> collections.abc.AsyncIterator[consumer_group_service_pb2.PullRequest]:
        while (request := await requests.get()) is not None:
            yield request

    subscription = consumer_group_service_pb2.PullSubscription(
        topic=topic, group="g", consumer="closing"
    )
    await requests.put(consumer_group_service_pb2.PullRequest(subscription=subscription))
    async with grpc.aio.insecure_channel(target) as channel:
        call = consumer_group_service_pb2_grpc.ConsumerGroupServiceStub(channel).Pull(send())
        async with asyncio.timeout(10):
            first = await call.read()
        [delivery] = first.deliveries
        # Released, then the half-close at once, as Consumer.close() does.
        release = consumer_group_service_pb2.Nacked(delivery_id=delivery.delivery_id, release=True)
        await requests.put(consumer_group_service_pb2.PullRequest(nacks=[release]))
        await requests.put(None)
        responses = []
        async with asyncio.timeout(10):
            while (response := await call.read()) != grpc.aio.EOF:
                responses.append(response)
        assert await call.code() == grpc.StatusCode.OK
    assert [d.delivery_id for r in responses for d in r.deliveries] == []
    assert [(s.delivery_id, s.status.code) for r in responses for s in r.settled] == [
        (delivery.delivery_id, 0)
    ]
    # Back to the group, its attempt not counted, released exactly once.
    async with client.consume(topic, "g", consumer="next") as consumer:
        async with asyncio.timeout(10):
            again = await anext(consumer)
        await again.ack()
    assert (again.packet.packet.tracking_id, again.delivery_count) == (tracking_id, 1)
    actions = await _verified_actions(client, tracking_id)
    assert actions == ["received", "dispatched", "delivered", "released", "delivered", "acked"]


async def test_a_pull_looks_for_run_out_leases_only_when_asked(
    client: packetbus.Client, topic: str, raw_redis: redis_asyncio.Redis
) -> None:
    # Looking walks the group's whole pending list, so a busy stream asks for it
    # about once a second, not on every pull.
    store = GroupStore(raw_redis, retry_budget=5, carcel_retention_ms=60_000)
    await client.create_consumer_group(topic, "g", start=packetbus.EARLIEST, ack_deadline_seconds=1)
    [tid] = await _dispatch(client, topic, 1)
    first = await store.pull(topic, "g", "a", 10)
    assert first is not None
    assert first.scanned
    assert [(e.tracking_id, e.count) for e in first.entries] == [(tid, 1)]
    await asyncio.sleep(1.2)  # a's lease runs out
    unasked = await store.pull(topic, "g", "b", 10, scan=False)
    assert unasked is not None
    assert (unasked.entries, unasked.scanned) == ([], False)
    asked = await store.pull(topic, "g", "b", 10, scan=True)
    assert asked is not None
    assert asked.scanned
    assert [(e.tracking_id, e.count) for e in asked.entries] == [(tid, 2)]
    group = await client.get_consumer_group(topic, "g")
    assert group.outstanding == 1


async def test_settlements_made_while_the_stream_reconnects_are_all_confirmed(
    client: packetbus.Client, server: RunningServer, topic: str
) -> None:
    """The connection under a consumer is cut at every batch: before its acks are
    made, or with them unconfirmed. Every settlement is confirmed on a later
    stream, none is swallowed by the stream that broke."""
    # Deliveries sent on a stream that broke come back when their lease runs out.
    await client.create_consumer_group(topic, "g", start=packetbus.EARLIEST, ack_deadline_seconds=2)
    sent = set(await _dispatch(client, topic, 30))
    proxy = FaultyProxy(upstream_port=server.port)
    await proxy.start()
    acked: set[str] = set()
    cuts = 0
    try:
        async with (
            await packetbus.Client.connect(f"127.0.0.1:{proxy.port}") as cut,
            cut.consume(topic, "g", consumer="c", max_batch_packets=10) as consumer,
            asyncio.timeout(20),
        ):
            batches = consumer.batches()
            while acked != sent:
                batch = await anext(batches)
                cut_before_ack = cuts % 2 == 0
                cuts += 1
                if cut_before_ack:
                    proxy.cut_all()
                    await asyncio.sleep(0.01)  # the stream sees the cut
                settling = consumer.ack(*batch)
                if not cut_before_ack:
                    proxy.cut_all()
                results = await settling
                assert [r.status.code for r in results] == [0] * len(batch)
                acked.update(d.packet.packet.tracking_id for d in batch)
    finally:
        await proxy.stop()
    assert cuts >= 3
    assert (await client.get_consumer_group(topic, "g")).outstanding == 0


async def test_a_pull_stream_its_caller_left_while_idle_leaves_no_pending_task(
    client: packetbus.Client,
    server: RunningServer,
    topic: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A Pull handler cancelled while it waits for entries once left its wait on the
    # stream's wake event pending: asyncio logged "Task was destroyed but it is
    # pending!" (an ERROR) when it was collected.
    streams = server.streams
    assert streams is not None
    before = streams.open_streams("pull")
    await client.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        groups = consumer_group_service_pb2_grpc.ConsumerGroupServiceStub(channel)
        subscription = consumer_group_service_pb2.PullSubscription(
            topic=topic, group="g", consumer="c-1"
        )
        gate = asyncio.Event()

        async def requests() -> collections.abc.AsyncIterator[
            consumer_group_service_pb2.PullRequest
        ]:
            yield consumer_group_service_pb2.PullRequest(subscription=subscription)
            await gate.wait()

        call = groups.Pull(requests())
        await client.dispatch(new_packet(topic))
        async with asyncio.timeout(10):
            response = await call.read()
        assert isinstance(response, consumer_group_service_pb2.PullResponse)
        assert len(response.deliveries) == 1
        # Nothing more to send: the handler waits; then its caller leaves.
        await asyncio.sleep(0.2)
        call.cancel()
        await until(lambda: streams.open_streams("pull") == before)
        gate.set()
    for _ in range(3):
        gc.collect()
        await asyncio.sleep(0.05)
    destroyed = [r for r in caplog.records if "Task was destroyed" in r.getMessage()]
    assert destroyed == []
