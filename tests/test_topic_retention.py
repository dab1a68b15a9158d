"""Per-topic retention (TopicService): max age, max packets, max bytes and
work-queue retention, enforced by the real scripts on the real store, with the
horizon recording what left so a resuming subscriber is told of the gap."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest
import redis.asyncio as redis_asyncio

import packetbus
from packetbus.v1 import packet_service_pb2, topic_service_pb2, topic_service_pb2_grpc
from tests.conftest import new_packet, run_cli

TRIMMED = packet_service_pb2.GAP_REASON_TRIMMED


async def dispatch(client: packetbus.Client, topic: str, n: int) -> list[str]:
    results = await client.dispatch_batch([new_packet(topic) for _ in range(n)])
    assert all(r.WhichOneof("outcome") == "receipt" for r in results)
    return [r.receipt.cursor for r in results]


async def stored(raw_redis: redis_asyncio.Redis, topic: str) -> list[str]:
    log: Any = await raw_redis.xrange(f"pb:{{{topic}}}:log")
    return [i.decode() for i, _ in log]


async def sizes(raw_redis: redis_asyncio.Redis, topic: str) -> dict[str, int]:
    log: Any = await raw_redis.xrange(f"pb:{{{topic}}}:log")
    return {i.decode(): len(f[b"p"]) for i, f in log}


def _id_order(stream_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = stream_id.partition("-")
    return int(milliseconds), int(sequence)


async def horizon(raw_redis: redis_asyncio.Redis, topic: str) -> dict[bytes, bytes]:
    found: Any = await raw_redis.hgetall(f"pb:{{{topic}}}:horizon")
    return dict(found)


async def resume(
    client: packetbus.Client, topic: str, after: str, n: int
) -> tuple[list[packet_service_pb2.SubscriptionGap], list[str]]:
    gaps: list[packet_service_pb2.SubscriptionGap] = []
    got: list[str] = []
    async with client.subscribe(topic, after=after, on_gap=gaps.append) as subscription:
        async with asyncio.timeout(10):
            async for s in subscription:
                got.append(s.receipt.cursor)
                if len(got) == n:
                    break
    return gaps, got


def gap(last: str, resume_after: str) -> packet_service_pb2.SubscriptionGap:
    return packet_service_pb2.SubscriptionGap(
        last_cursor=last, resume_after_cursor=resume_after, reason=TRIMMED
    )


async def test_max_packets_trims_exactly_now_and_on_each_dispatch_and_reports_the_gap(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    cursors = await dispatch(client, topic, 10)
    set_ = await client.set_topic_retention(topic, max_packets=4)
    assert set_.removed == 6
    assert set_.retention == topic_service_pb2.TopicRetention(
        max_packets=4, policy=topic_service_pb2.RETENTION_POLICY_LIMITS
    )
    assert await stored(raw_redis, topic) == cursors[6:]

    more = await dispatch(client, topic, 3)
    assert await stored(raw_redis, topic) == (cursors + more)[-4:]
    assert (await horizon(raw_redis, topic))[b"t"] == cursors[8].encode()
    got = await client.get_topic_retention(topic)
    assert (got.retention.max_packets, got.packets) == (4, 4)

    gaps, after = await resume(client, topic, cursors[0], 4)
    assert gaps == [gap(cursors[0], cursors[8])]
    assert after == (cursors + more)[-4:]


async def test_max_bytes_keeps_the_newest_packets_that_fit(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    cursors = await dispatch(client, topic, 20)
    size = await sizes(raw_redis, topic)
    # The fewest newest packets whose bytes reach the smallest limit allowed (1 KiB):
    # how many that is depends on the stored form (the server's entries are stored
    # once per call, not in each packet), not on the rule under test.
    keep = next(k for k in range(1, 21) if sum(size[c] for c in cursors[-k:]) >= 1024)
    assert keep < 20
    limit = sum(size[c] for c in cursors[-keep:])
    set_ = await client.set_topic_retention(topic, max_bytes=limit)
    assert set_.removed == 20 - keep
    assert await stored(raw_redis, topic) == cursors[-keep:]
    got = await client.get_topic_retention(topic)
    assert (got.packets, got.stored_bytes) == (keep, limit)

    # Each dispatch keeps the newest packets whose bytes fit. Packets differ by a byte
    # now and then (a timestamp's varint), so which fit is read from their sizes.
    more = await dispatch(client, topic, 2)
    left = await stored(raw_redis, topic)
    size.update(await sizes(raw_redis, topic))
    everything = cursors + more
    fitting: list[str] = []
    for cursor in reversed(everything):
        if sum(size[c] for c in fitting) + size[cursor] > limit:
            break
        fitting.insert(0, cursor)
    assert left == fitting
    assert more == left[-2:]
    got = await client.get_topic_retention(topic)
    assert got.stored_bytes == sum(size[c] for c in left) <= limit

    gaps, after = await resume(client, topic, cursors[0], len(left))
    assert gaps == [gap(cursors[0], everything[everything.index(left[0]) - 1])]
    assert after == left


async def test_a_packet_limit_on_a_long_log_trims_exactly_page_by_page(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    # The script pages (256 entries) through what a limit removes at once, rather
    # than holding every removed packet in the store's Lua memory (one XRANGE of
    # them all); the byte count still covers exactly what is left.
    await client.set_topic_retention(topic, max_bytes=1 << 30)
    for _ in range(3):
        await client.dispatch_batch([new_packet(topic) for _ in range(300)])
    kept = (await stored(raw_redis, topic))[-3:]
    set_ = await client.set_topic_retention(topic, max_packets=3, max_bytes=1 << 30)
    assert set_.removed == 897
    assert await stored(raw_redis, topic) == kept
    # Stream ids order as (milliseconds, sequence) numbers, not as text: "…-9" is
    # before "…-10" (as text it is after, and the test failed when one millisecond
    # held ten entries).
    assert _id_order((await horizon(raw_redis, topic))[b"t"].decode()) < _id_order(kept[0])
    got = await client.get_topic_retention(topic)
    assert (got.packets, got.stored_bytes) == (3, sum((await sizes(raw_redis, topic)).values()))


async def test_max_age_trims_what_is_older(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    await client.set_topic_retention(topic, max_age_seconds=1)
    old = await dispatch(client, topic, 3)
    await asyncio.sleep(1.2)
    new = await dispatch(client, topic, 2)  # this dispatch trims
    assert await stored(raw_redis, topic) == new
    gaps, after = await resume(client, topic, old[0], 2)
    assert gaps == [gap(old[0], old[-1])]
    assert after == new


async def _pull_ack(client: packetbus.Client, topic: str, group: str, n: int) -> list[str]:
    acked: list[str] = []
    async with client.consume(topic, group, consumer=f"{group}-c") as consumer:
        async with asyncio.timeout(10):
            while len(acked) < n:
                delivery = await anext(consumer)
                await delivery.ack()
                acked.append(delivery.packet.receipt.cursor)
    return acked


async def test_work_queue_drops_a_packet_after_the_last_groups_ack_and_not_before(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    await client.set_topic_retention(topic, work_queue=True)
    await client.create_consumer_group(topic, "g1", start=packetbus.EARLIEST)
    await client.create_consumer_group(topic, "g2", start=packetbus.EARLIEST)
    cursors = await dispatch(client, topic, 3)

    assert await _pull_ack(client, topic, "g1", 3) == cursors
    assert await stored(raw_redis, topic) == cursors  # g2 has acked none

    assert await _pull_ack(client, topic, "g2", 2) == cursors[:2]
    assert await stored(raw_redis, topic) == cursors[2:]

    gaps, after = await resume(client, topic, cursors[0], 1)
    assert gaps == [gap(cursors[0], cursors[1])]
    assert after == cursors[2:]

    async with client.consume(topic, "g2", consumer="g2-c") as consumer:
        async with asyncio.timeout(10):
            delivery = await anext(consumer)
        await delivery.ack()
    assert await stored(raw_redis, topic) == []


async def test_work_queue_drops_what_the_other_groups_acked_when_the_last_laggard_is_deleted(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    await client.set_topic_retention(topic, work_queue=True)
    await client.create_consumer_group(topic, "g1", start=packetbus.EARLIEST)
    await client.create_consumer_group(topic, "g2", start=packetbus.EARLIEST)
    await client.create_consumer_group(topic, "g3", start=packetbus.EARLIEST)
    cursors = await dispatch(client, topic, 3)
    assert await _pull_ack(client, topic, "g1", 3) == cursors
    assert await _pull_ack(client, topic, "g2", 1) == cursors[:1]

    # g3 acked nothing: deleting it leaves g2's floor, without any later ack.
    assert await client.delete_consumer_group(topic, "g3")
    assert await stored(raw_redis, topic) == cursors[1:]
    gaps, after = await resume(client, topic, cursors[0], 2)
    assert gaps == []  # the subscriber had read cursors[0]: nothing it missed
    assert after == cursors[1:]
    # A replay of the delete (its reply lost) changes nothing more.
    assert not await client.delete_consumer_group(topic, "g3")
    assert await stored(raw_redis, topic) == cursors[1:]
    # The last group gone: no group, so the packets stay (as without groups).
    assert await client.delete_consumer_group(topic, "g1")
    assert await client.delete_consumer_group(topic, "g2")
    assert await stored(raw_redis, topic) == cursors[1:]


async def test_work_queue_without_groups_keeps_packets(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    cursors = await dispatch(client, topic, 3)
    assert (await client.set_topic_retention(topic, work_queue=True)).removed == 0
    more = await dispatch(client, topic, 1)
    assert await stored(raw_redis, topic) == cursors + more


async def test_setting_again_is_idempotent_and_clearing_restores_the_horizons_expiry(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    cursors = await dispatch(client, topic, 5)
    assert (await client.set_topic_retention(topic, max_packets=2)).removed == 3
    before = await horizon(raw_redis, topic)
    assert (await client.set_topic_retention(topic, max_packets=2)).removed == 0
    assert await horizon(raw_redis, topic) == before
    assert await raw_redis.pttl(f"pb:{{{topic}}}:horizon") == -1

    cleared = await client.set_topic_retention(topic)
    assert cleared.retention == topic_service_pb2.TopicRetention()
    got = await client.get_topic_retention(topic)
    assert got.retention == topic_service_pb2.TopicRetention()
    assert await raw_redis.pttl(f"pb:{{{topic}}}:horizon") > 0
    # No limit any more: nothing more is trimmed.
    more = await dispatch(client, topic, 3)
    assert await stored(raw_redis, topic) == cursors[3:] + more


@pytest.mark.parametrize(
    ("retention", "field"),
    [
        (topic_service_pb2.TopicRetention(max_age_seconds=86_401), "retention.max_age_seconds"),
        (topic_service_pb2.TopicRetention(max_packets=10**9 + 1), "retention.max_packets"),
        (topic_service_pb2.TopicRetention(max_bytes=1023), "retention.max_bytes"),
        (topic_service_pb2.TopicRetention(max_bytes=(1 << 40) + 1), "retention.max_bytes"),
        (topic_service_pb2.TopicRetention(policy=7), "retention.policy"),  # type: ignore[arg-type]
    ],
)
async def test_bad_limits_are_refused_with_nothing_written(
    target: str,
    raw_redis: redis_asyncio.Redis,
    topic: str,
    retention: topic_service_pb2.TopicRetention,
    field: str,
) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = topic_service_pb2_grpc.TopicServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.SetTopicRetention(
                topic_service_pb2.SetTopicRetentionRequest(topic=topic, retention=retention)
            )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (refused.value.details() or "")
    assert await raw_redis.exists(f"pb:{{{topic}}}:horizon") == 0


async def test_a_bad_topic_is_refused(client: packetbus.Client) -> None:
    with pytest.raises(packetbus.PacketbusError) as refused:
        await client.set_topic_retention("", max_packets=1)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in refused.value.field_violations] == ["topic"]


async def test_cli_sets_and_gets_the_limits_as_json(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, target: str, topic: str
) -> None:
    cursors = await dispatch(client, topic, 3)
    argv = ["--target", target, "topic", "retention"]
    done = await asyncio.to_thread(
        run_cli, *argv, "set", topic, "--max-packets", "1", "--work-queue"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "retention": {"maxPackets": "1", "policy": "RETENTION_POLICY_WORK_QUEUE"},
        "removed": "2",
    }
    assert await stored(raw_redis, topic) == cursors[2:]
    done = await asyncio.to_thread(run_cli, *argv, "get", topic)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["packets"] == "1"

    refused = await asyncio.to_thread(run_cli, *argv, "set", topic, "--max-bytes", "10")
    assert refused.returncode != 0
    assert "retention.max_bytes" in refused.stderr


async def test_sync_client_sets_and_gets(target: str, topic: str) -> None:
    def use_sync_client() -> topic_service_pb2.GetTopicRetentionResponse:
        with packetbus.SyncClient.connect(target) as bus:
            assert bus.set_topic_retention(topic, max_age_seconds=60).removed == 0
            got: topic_service_pb2.GetTopicRetentionResponse = bus.get_topic_retention(topic)
            return got

    # The server runs on this test's loop: the blocking client runs beside it.
    got = await asyncio.to_thread(use_sync_client)
    assert got.retention.max_age_seconds == 60
    assert got.retention.policy == topic_service_pb2.RETENTION_POLICY_LIMITS
