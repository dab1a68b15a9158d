"""Audit export: packets, carcel entries and governance decisions of a topic and time range,
as JSON lines that verify offline; one altered byte fails and names the packet."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import packetbus
from packetbus_server import Limits, RunningServer, ServerConfig, start
from tests.conftest import new_packet, unique
from tests.test_custody import cli, offline_verify

POLICY = """
[[rules]]
id = "too-uncertain"
decision = "reject"
reason = "entropy too high"
topic = "audit.*"
fields = { entropy = { gt = 0.7 } }

[[rules]]
id = "requests-need-approval"
decision = "hold"
reason = "requests need a guardian"
topic = "audit.*"
speech_act = "REQUEST"
"""


@pytest.fixture(scope="module")
async def audited(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningServer]:
    path = tmp_path_factory.mktemp("audit") / "policy.toml"
    path.write_text(POLICY)
    srv = await start(
        ServerConfig(
            listen="127.0.0.1:0",
            redis_url=redis_url,
            limits=Limits(policy_reload_seconds=0.05),
            policy_file=path,
        )
    )
    yield srv
    await srv.stop(grace=0)


@pytest.fixture
def target(audited: RunningServer) -> str:
    return f"127.0.0.1:{audited.port}"


@pytest.fixture
async def bus(target: str) -> AsyncIterator[packetbus.Client]:
    async with await packetbus.Client.connect(target) as client:
        yield client


def packet(topic: str, *, entropy: float = 0.1, request: bool = False) -> packetbus.Packet:
    p = new_packet(topic)
    p.data.update({"entropy": entropy, "primitive": "context.share"})
    if request:
        p.speech_act = packetbus.SpeechAct.Value("SPEECH_ACT_REQUEST")
    return p


async def governed_topic(bus: packetbus.Client) -> tuple[str, dict[str, str]]:
    """A topic with 2 allowed packets, 1 rejected, 1 held then approved, 1 held then denied."""
    approver = packetbus.AgentIdentity.generate(unique("guardian"))
    await bus.register_identity(approver)
    topic = unique("audit")
    allowed, rejected = [packet(topic), packet(topic)], packet(topic, entropy=0.9)
    approved, denied = packet(topic, request=True), packet(topic, request=True)
    results = await bus.dispatch_batch([*allowed, rejected, approved, denied])
    assert [r.WhichOneof("outcome") for r in results] == [
        "receipt",
        "receipt",
        "error",
        "held",
        "held",
    ]
    await bus.approve_packet(topic, approved.tracking_id, identity=approver)
    await bus.deny_packet(topic, denied.tracking_id, reason="not today", identity=approver)
    return topic, {
        "allowed": allowed[0].tracking_id,
        "rejected": rejected.tracking_id,
        "approved": approved.tracking_id,
        "denied": denied.tracking_id,
    }


def kinds(path: Path) -> Counter[str]:
    return Counter(json.loads(line)["kind"] for line in path.read_text().splitlines())


async def export(target: str, path: Path, *args: str) -> None:
    wrote = await asyncio.to_thread(cli, target, "export", "--out", str(path), *args)
    assert wrote.returncode == 0, wrote.stderr


async def test_an_export_of_a_topic_verifies_offline(
    bus: packetbus.Client, target: str, tmp_path: Path
) -> None:
    topic, ids = await governed_topic(bus)
    path = tmp_path / "audit.jsonl"
    await export(target, path, "--topic", topic)

    assert kinds(path) == {"keys": 1, "packet": 3, "carcel": 2, "decision": 5}
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    decisions = [
        (d["decision"]["decision"], d["decision"]["trackingId"], d["decision"].get("ruleId"))
        for d in lines
        if d["kind"] == "decision"
    ]
    assert sorted(decisions) == sorted(
        [
            ("rejected", ids["rejected"], "too-uncertain"),
            ("held", ids["approved"], "requests-need-approval"),
            ("held", ids["denied"], "requests-need-approval"),
            ("approved", ids["approved"], "requests-need-approval"),
            ("denied", ids["denied"], "requests-need-approval"),
        ]
    )
    carceled = {
        d["entry"]["packet"]["packet"]["trackingId"]: d["entry"]
        for d in lines
        if d["kind"] == "carcel"
    }
    assert set(carceled) == {ids["rejected"], ids["denied"]}
    assert carceled[ids["rejected"]]["ruleId"] == "too-uncertain"

    offline = await asyncio.to_thread(offline_verify, path)
    assert offline.returncode == 0, offline.stdout
    assert "5 of 5 packets verified (2 carceled; 5 decisions)" in offline.stdout

    only_packets = tmp_path / "packets.jsonl"
    await export(target, only_packets, "--topic", topic, "--packets-only")
    assert kinds(only_packets) == {"keys": 1, "packet": 3}


def alter_content_byte(path: Path, tracking_id: str, out: Path) -> None:
    """Change one character of the base64 content of the line holding `tracking_id`."""
    raw = path.read_bytes().splitlines(keepends=True)
    [index] = [
        i
        for i, line in enumerate(raw)
        if tracking_id.encode() in line and not line.startswith(b'{"kind":"decision"')
    ]
    line = raw[index]
    start = line.index(b'"content":"') + len(b'"content":"')
    at = start + 10
    line = line[:at] + (b"B" if line[at : at + 1] != b"B" else b"C") + line[at + 1 :]
    raw[index] = line
    out.write_bytes(b"".join(raw))


async def test_altering_one_byte_fails_verification_and_names_the_packet(
    bus: packetbus.Client, target: str, tmp_path: Path
) -> None:
    topic, ids = await governed_topic(bus)
    path = tmp_path / "audit.jsonl"
    await export(target, path, "--topic", topic)

    for victim in ("approved", "rejected", "denied"):
        altered = tmp_path / f"altered-{victim}.jsonl"
        alter_content_byte(path, ids[victim], altered)
        assert len(altered.read_bytes()) == len(path.read_bytes())
        offline = await asyncio.to_thread(offline_verify, altered)
        assert offline.returncode == 1, offline.stdout
        failing = [line for line in offline.stdout.splitlines() if "verified" not in line]
        assert failing
        assert all(line.startswith(ids[victim]) for line in failing), offline.stdout
        assert "4 of 5 packets verified" in offline.stdout

    # A byte that breaks the line's JSON still names the packet.
    raw = path.read_bytes()
    at = raw.index(b'"trackingId":"' + ids["allowed"].encode())
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(raw[: at - 1] + b"!" + raw[at:])
    offline = await asyncio.to_thread(offline_verify, broken)
    assert offline.returncode == 1
    assert f"{ids['allowed']} (line" in offline.stdout


async def test_an_export_takes_a_time_range(bus: packetbus.Client) -> None:
    topic = unique("audit")
    first = await bus.dispatch_batch([packet(topic), packet(topic, entropy=0.9)])
    await asyncio.sleep(0.02)
    second = await bus.dispatch_batch([packet(topic), packet(topic, entropy=0.95)])
    boundary = first[0].receipt.stored_at.ToDatetime(tzinfo=UTC) + timedelta(milliseconds=10)
    assert boundary < second[0].receipt.stored_at.ToDatetime(tzinfo=UTC)

    async def exported(
        since: datetime | None = None, until: datetime | None = None
    ) -> tuple[list[str], list[str], list[str]]:
        packets, carceled, decided = [], [], []
        async for response in bus.export(
            topic, since=since, until=until, include_carcel_entries=True, include_decisions=True
        ):
            packets += [p.packet.tracking_id for p in response.packets]
            carceled += [e.packet.packet.tracking_id for e in response.carcel_entries]
            decided += [d.tracking_id for d in response.decisions]
        return packets, carceled, decided

    ids = [r.tracking_id for r in (*first, *second)]
    assert await exported(until=boundary) == ([ids[0]], [ids[1]], [ids[1]])
    assert await exported(since=boundary) == ([ids[2]], [ids[3]], [ids[3]])
    assert await exported() == ([ids[0], ids[2]], [ids[1], ids[3]], [ids[1], ids[3]])

    with pytest.raises(packetbus.PacketbusError) as caught:
        async for _ in bus.export(topic, since=boundary, until=boundary - timedelta(seconds=1)):
            pass
    assert [(v.field, v.reason) for v in caught.value.field_violations] == [("until", "RANGE")]
