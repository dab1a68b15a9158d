"""One length rule for names, wherever a name is taken or derived from another.

Lengths are UTF-8 bytes everywhere. An agent id the registry accepts has an inbox
(``inbox/<id>``, which may be longer than an ordinary topic), can be a packet's
origin and a consumer; an id one byte longer is refused by each of them alike.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

import packetbus
from packetbus_server import _field_rules, _fields, _violation
from tests.conftest import new_packet, unique

# 255 bytes: the longest agent id, in ASCII, in 3-byte (CJK) and 4-byte characters.
_LONGEST = {
    "ascii": lambda tag: tag + "a" * (255 - len(tag)),
    "cjk": lambda tag: tag + "\u5b57" * ((255 - len(tag)) // 3) + "z" * ((255 - len(tag)) % 3),
    "emoji": lambda tag: (
        tag + "\U0001f600" * ((255 - len(tag)) // 4) + "z" * ((255 - len(tag)) % 4)
    ),
}


def _tag() -> str:
    return unique("n").replace(".", "-")  # 14 ASCII bytes, unique per test


@pytest.mark.parametrize("script", sorted(_LONGEST))
async def test_the_longest_agent_id_registers_sends_and_receives_through_its_inbox(
    client: packetbus.Client, script: str
) -> None:
    agent = _LONGEST[script](_tag())
    assert len(agent.encode()) == 255
    await client.register_agent(agent, ttl=60)
    try:
        packet = new_packet("placeholder")
        packet.origin = agent
        packet.task.id = "t-long"
        receipt = await client.send_to(agent, packet)
        assert receipt.topic == packetbus.inbox_topic(agent)
        assert len(receipt.topic) > 200  # longer than an ordinary topic may be
        async with await client.inbox(agent) as inbox:
            async with asyncio.timeout(10):
                delivery = await anext(inbox)
            assert delivery.packet.packet.origin == agent
            assert delivery.packet.packet.task.id == "t-long"
            await delivery.ack()
    finally:
        await client.deregister_agent(agent)


def test_the_70_character_cjk_id_of_the_report_has_an_inbox() -> None:
    assert packetbus.inbox_topic("\u5b57" * 70).startswith("inbox/:e5:ad:97")


@pytest.mark.parametrize("script", sorted(_LONGEST))
async def test_one_byte_over_is_refused_alike_everywhere(
    client: packetbus.Client, script: str
) -> None:
    agent = _LONGEST[script](_tag()) + "z"
    assert len(agent.encode()) == 256

    with pytest.raises(ValueError, match=r"too long: 256 bytes \(UTF-8\)"):
        packetbus.inbox_topic(agent)

    with pytest.raises(packetbus.PacketbusError) as registered:
        await client.register_agent(agent, ttl=60)
    assert registered.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.reason) for v in registered.value.field_violations] == [
        ("agent.id", "LENGTH")
    ]

    packet = new_packet(unique("topic"))
    packet.origin = agent
    with pytest.raises(packetbus.PacketbusError) as dispatched:
        await client.dispatch(packet)
    assert dispatched.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.reason) for v in dispatched.value.field_violations] == [
        ("origin", "LENGTH")
    ]
    for error in (registered.value, dispatched.value):
        assert "1..255 bytes (UTF-8); got 256" in str(error)


def test_every_inbox_topic_of_a_valid_id_is_a_valid_topic() -> None:
    worst = "\x01" * 255  # every byte escaped: the longest inbox topic there is
    topic = packetbus.inbox_topic(worst)
    assert len(topic) == _fields.MAX_INBOX_TOPIC_LENGTH
    out: list[_violation.Violation] = []
    _field_rules.validate_topic(out, "topic", topic, 200)
    assert out == []
    # Ordinary topics keep their own limit, inbox topics theirs.
    _field_rules.validate_topic(out, "topic", "t" * 201, 200)
    _field_rules.validate_topic(out, "topic", topic + "a", 200)
    assert [v.rule for v in out] == ["LENGTH", "LENGTH"]
