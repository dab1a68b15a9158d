"""Metric labels a client chooses stay bounded (issue 15: "Labels stay bounded"):
consumer group names, which clients create and delete without end, count under
their own label only up to counting.MAX_GROUP_LABELS names per process."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

import packetbus
from packetbus_server._observability import counting

from .conftest import new_packet, unique


def _carceled(group: str) -> float | None:
    return REGISTRY.get_sample_value("packetbus_group_carceled_total", {"group": group})


async def _carcel_one(client: packetbus.Client, topic: str, group: str) -> None:
    """Create `group`, nack its one packet into the carcel, delete the group."""
    await client.create_consumer_group(
        topic, group, start=packetbus.EARLIEST, max_delivery_attempts=1
    )
    async with client.consume(topic, group, consumer="c1") as consumer:
        async with asyncio.timeout(20):
            delivery = await anext(consumer)
            [result] = await delivery.nack(reason="poison")
            assert result.carcel_id
    await client.delete_consumer_group(topic, group)


async def test_group_names_past_the_bound_count_under_other(
    client: packetbus.Client, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Input: groups created, carceling a packet, deleted, each under a new name
    # (a client churning random names); before, each left a label child forever.
    monkeypatch.setattr(counting, "group_label", counting.GroupLabels(most=2))
    await client.dispatch(new_packet(topic))
    other_before = _carceled(counting.OTHER_GROUPS) or 0.0
    names = [unique("g") for _ in range(4)]
    for name in names:
        await _carcel_one(client, topic, name)

    assert [_carceled(n) for n in names] == [1.0, 1.0, None, None]
    assert _carceled(counting.OTHER_GROUPS) == other_before + 2
    # A name already labelled keeps its label once the bound is reached.
    await _carcel_one(client, topic, names[0])
    assert _carceled(names[0]) == 2.0
