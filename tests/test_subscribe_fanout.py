"""Fan-out: live subscribers of one topic, woken by one packet, share one page read
(PacketStore.follow) and are each sent the same bytes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import packetbus
from packetbus_server import _keys, _scripts
from tests.conftest import new_packet


class _CountedFollow:
    """scripts/follow.lua as the server runs it, counting the calls on one topic's log."""

    def __init__(self, script: _scripts.LuaScript, log_key: str) -> None:
        self._script, self._log_key, self.calls = script, log_key, 0
        self.called = asyncio.Event()

    async def run(self, redis: Any, keys: list[str], args: list[Any]) -> Any:
        if keys[0] == self._log_key:
            self.calls += 1
            self.called.set()
        return await self._script.run(redis, keys, args)


async def _first(subscription: packetbus.Subscription) -> packetbus.StoredPacket:
    async with subscription:
        async for stored in subscription:
            return stored
    raise AssertionError("the subscription ended without a packet")


async def test_live_subscribers_woken_by_one_packet_share_one_page_read(
    client: packetbus.Client, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = _CountedFollow(_scripts.FOLLOW, _keys.topic_log(topic))
    monkeypatch.setattr(_scripts, "FOLLOW", counted)
    [first] = await client.dispatch_batch([new_packet(topic)])
    after = first.receipt.cursor
    readers = [asyncio.create_task(_first(client.subscribe(topic, after=after))) for _ in range(5)]
    # Every subscription opens, reads the (empty) page after `after` (shared or not)
    # and waits on the topic's one XREAD, whose block (1 s) outlasts what follows.
    await asyncio.wait_for(counted.called.wait(), 10)
    await asyncio.sleep(0.3)
    before = counted.calls
    packet = new_packet(topic)
    await client.dispatch(packet)
    async with asyncio.timeout(10):
        got = await asyncio.gather(*readers)
    woke = counted.calls - before
    assert [g.packet.tracking_id for g in got] == [packet.tracking_id] * 5
    assert len({g.SerializeToString() for g in got}) == 1
    # One read for all five (five before the pages were shared).
    assert woke == 1
