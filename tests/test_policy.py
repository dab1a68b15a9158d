"""Governance: a policy file's rules reject packets into the carcel or hold them for approval."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import redis.asyncio as redis_asyncio
from google.rpc import error_details_pb2

import packetbus
from packetbus import _custody
from packetbus._approvals import decision_entry
from packetbus._client import sign_as
from packetbus.v1 import policy_service_pb2
from packetbus_server import Limits, RunningServer, ServerConfig, start
from tests.conftest import new_packet, unique
from tests.test_custody import cli

APPROVER = "guardian-1"

POLICY = """
default = "allow"

[approval]
approvers = ["guardian-*"]

[[rules]]
id = "no-uncertain-drones"
decision = "reject"
reason = "entropy too high for drones"
topic = "gov.*"
content_type = "data"
[rules.fields]
vertical = { in = ["drones", "robotics"] }
entropy = { gt = 0.7 }

[[rules]]
id = "spawn-needs-guardian"
decision = "hold"
reason = "spawning needs a guardian"
topic = "gov.*"
speech_act = "REQUEST"
fields = { primitive = "logistics.spawn" }
"""


@pytest.fixture(scope="module")
async def governed(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[RunningServer, Path]]:
    path = tmp_path_factory.mktemp("policy") / "policy.toml"
    path.write_text(POLICY)
    limits = Limits(policy_reload_seconds=0.05)
    srv = await start(
        ServerConfig(listen="127.0.0.1:0", redis_url=redis_url, limits=limits, policy_file=path)
    )
    yield srv, path
    await srv.stop(grace=0)


@pytest.fixture
async def bus(governed: tuple[RunningServer, Path]) -> AsyncIterator[packetbus.Client]:
    srv, path = governed
    async with await packetbus.Client.connect(f"127.0.0.1:{srv.port}") as client:
        await set_policy(client, path, POLICY)
        yield client


@pytest.fixture
def policy_file(governed: tuple[RunningServer, Path]) -> Path:
    return governed[1]


@pytest.fixture
async def approver(bus: packetbus.Client) -> packetbus.AgentIdentity:
    identity = packetbus.AgentIdentity.generate(unique(APPROVER))
    await bus.register_identity(identity)
    return identity


async def set_policy(client: packetbus.Client, path: Path, text: str) -> str:
    """Write the policy file and wait until the server runs it; its version."""
    version = hashlib.sha256(text.encode()).hexdigest()
    await asyncio.to_thread(path.write_text, text)
    async with asyncio.timeout(5):
        while (await client.get_policy()).version != version:  # noqa: ASYNC110 (polling the server)
            await asyncio.sleep(0.02)
    return version


def drone_packet(topic: str, entropy: float) -> packetbus.Packet:
    packet = new_packet(topic)
    packet.data.update({"vertical": "drones", "entropy": entropy, "primitive": "matrix.route"})
    return packet


def spawn_packet(topic: str) -> packetbus.Packet:
    packet = new_packet(topic)
    packet.speech_act = packetbus.SpeechAct.Value("SPEECH_ACT_REQUEST")
    packet.data.update({"primitive": "logistics.spawn", "vertical": "drones", "entropy": 0.1})
    return packet


def error_info(result: packetbus.DispatchResult) -> dict[str, str]:
    for detail in result.error.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return {"reason": info.reason, **info.metadata}
    return {}


async def test_a_reject_rule_carcels_the_packet_with_its_rule_id(
    bus: packetbus.Client, raw_redis: redis_asyncio.Redis
) -> None:
    topic = unique("gov")
    rejected, allowed = drone_packet(topic, 0.9), drone_packet(topic, 0.2)
    results = await bus.dispatch_batch([rejected, allowed])

    assert results[0].error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert "no-uncertain-drones" in results[0].error.message
    info = error_info(results[0])
    assert info["reason"] == "POLICY_REJECTED"
    assert info["rule_id"] == "no-uncertain-drones"
    assert info["rule_reason"] == "entropy too high for drones"
    assert results[1].WhichOneof("outcome") == "receipt"
    assert await raw_redis.xlen(f"pb:{{{topic}}}:log") == 1
    assert await raw_redis.xlen(f"pb:{{{topic}}}:carcel") == 1

    [entry] = [e async for e in bus.carcel_entries(topic)]
    assert entry.id == info["carcel_entry_id"]
    assert (entry.rule_id, entry.reason, entry.source) == (
        "no-uncertain-drones",
        "entropy too high for drones",
        "policy",
    )
    assert entry.policy_version == (await bus.get_policy()).version
    assert entry.packet.packet.tracking_id == rejected.tracking_id
    keys = {k.key_id: k for k in await bus.signing_keys()}
    report = _custody.verify_chain(
        tracking_id=rejected.tracking_id,
        content=entry.packet.content,
        chain=entry.packet.packet.chain_of_custody,
        keys=keys,
        head=None,
    )
    assert [(e.ok, e.action) for e in report.entries] == [(True, "received"), (True, "rejected")]

    # A retry answers the same, and stores and counts nothing twice.
    [again] = await bus.dispatch_batch([rejected])
    assert again.error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert error_info(again)["carcel_entry_id"] == entry.id
    assert await raw_redis.xlen(f"pb:{{{topic}}}:carcel") == 1
    stats = await bus.policy_stats(topic)
    assert dict(stats.by_rule) == {"no-uncertain-drones": 1}
    assert dict(stats.by_reason) == {"entropy too high for drones": 1}
    assert dict(stats.by_decision) == {"rejected": 1}

    # The same tracking id with other contents is still a conflict.
    other = drone_packet(topic, 0.95)
    other.tracking_id = rejected.tracking_id
    [conflict] = await bus.dispatch_batch([other])
    assert conflict.error.code == grpc.StatusCode.ALREADY_EXISTS.value[0]
    assert await raw_redis.xlen(f"pb:{{{topic}}}:carcel") == 1

    # Client.dispatch raises it.
    with pytest.raises(packetbus.PacketbusError) as caught:
        await bus.dispatch(drone_packet(topic, 0.8))
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED


async def test_a_signed_packet_keeps_its_origin_entry_in_the_carcel(
    bus: packetbus.Client,
) -> None:
    identity = packetbus.AgentIdentity.generate(unique("drone-agent"))
    await bus.register_identity(identity)
    topic = unique("gov")
    packet = drone_packet(topic, 0.99)
    packet.origin = identity.agent_id
    sign_as(packet, identity)
    [result] = await bus.dispatch_batch([packet])
    assert error_info(result)["rule_id"] == "no-uncertain-drones"
    [entry] = [e async for e in bus.carcel_entries(topic)]
    chain = entry.packet.packet.chain_of_custody
    keys = {k.key_id: k for k in await bus.signing_keys()}
    report = _custody.verify_chain(
        tracking_id=packet.tracking_id,
        content=entry.packet.content,
        chain=chain,
        keys=keys,
        head=None,
    )
    assert [(e.ok, e.action) for e in report.entries] == [
        (True, "originated"),
        (True, "received"),
        (True, "rejected"),
    ]


async def test_hold_then_approve_delivers_with_the_approvers_signed_entry(
    bus: packetbus.Client, raw_redis: redis_asyncio.Redis, approver: packetbus.AgentIdentity
) -> None:
    topic = unique("gov")
    await bus.create_consumer_group(topic, "workers", start=packetbus.EARLIEST)
    packet = spawn_packet(topic)
    [result] = await bus.dispatch_batch([packet])
    assert result.WhichOneof("outcome") == "held"
    assert (result.held.rule_id, result.held.reason) == (
        "spawn-needs-guardian",
        "spawning needs a guardian",
    )
    assert await raw_redis.xlen(f"pb:{{{topic}}}:log") == 0
    assert await raw_redis.xlen(f"pb:{{{topic}}}:held") == 1
    with pytest.raises(packetbus.PacketbusError) as missing:
        await bus.get_packet(packet.tracking_id)
    assert missing.value.code == grpc.StatusCode.NOT_FOUND

    # A retry of the dispatch answers "held" again.
    [again] = await bus.dispatch_batch([packet])
    assert again.WhichOneof("outcome") == "held"
    assert await raw_redis.xlen(f"pb:{{{topic}}}:held") == 1

    [held] = [h async for h in bus.list_held_packets(topic)]
    assert held.packet.packet.tracking_id == packet.tracking_id
    assert held.rule_id == "spawn-needs-guardian"

    receipt = await bus.approve_packet(topic, packet.tracking_id, identity=approver, note="ok")
    assert receipt.topic == topic
    assert await raw_redis.xlen(f"pb:{{{topic}}}:held") == 0
    assert [h async for h in bus.list_held_packets(topic)] == []

    verdict = await bus.verify_custody(packet.tracking_id)
    assert verdict.verified
    assert [(e.action, e.actor) for e in verdict.entries][1:] == [
        ("held", (await bus.server_info()).server_id),
        ("approved", approver.agent_id),
        ("dispatched", (await bus.server_info()).server_id),
    ]
    approved_key = verdict.entries[2].key_id
    assert approved_key == approver.signer.key_id

    async with bus.consume(topic, "workers", consumer="w1") as consumer:
        async with asyncio.timeout(10):
            delivery = await anext(aiter(consumer))
        assert delivery.packet.packet.tracking_id == packet.tracking_id
        await delivery.ack()

    # Approving again answers the same receipt; the retried dispatch now answers it too.
    assert await bus.approve_packet(topic, packet.tracking_id, identity=approver) == receipt
    [after] = await bus.dispatch_batch([packet])
    assert after.receipt == receipt
    assert await raw_redis.xlen(f"pb:{{{topic}}}:log") == 1
    stats = await bus.policy_stats(topic)
    assert dict(stats.by_decision) == {"held": 1, "approved": 1}
    assert dict(stats.by_rule) == {"spawn-needs-guardian": 1}


async def test_hold_then_deny_carcels_the_packet(
    bus: packetbus.Client, raw_redis: redis_asyncio.Redis, approver: packetbus.AgentIdentity
) -> None:
    topic = unique("gov")
    packet = spawn_packet(topic)
    [result] = await bus.dispatch_batch([packet])
    assert result.WhichOneof("outcome") == "held"

    entry_id = await bus.deny_packet(
        topic, packet.tracking_id, reason="no spawning today", identity=approver
    )
    assert await raw_redis.xlen(f"pb:{{{topic}}}:held") == 0
    assert await raw_redis.xlen(f"pb:{{{topic}}}:carcel") == 1
    entry = await bus.get_carcel_entry(topic, entry_id)
    assert (entry.rule_id, entry.reason, entry.detail, entry.source) == (
        "spawn-needs-guardian",
        "denied by approver",
        "no spawning today",
        f"approval:{approver.agent_id}",
    )
    keys = {k.key_id: k for k in await bus.signing_keys()}
    report = _custody.verify_chain(
        tracking_id=packet.tracking_id,
        content=entry.packet.content,
        chain=entry.packet.packet.chain_of_custody,
        keys=keys,
        head=None,
    )
    assert [(e.ok, e.action, e.actor) for e in report.entries][-1] == (
        True,
        "denied",
        approver.agent_id,
    )

    # Denied again: the same entry. Approved after: refused. Dispatched again: rejected.
    assert (
        await bus.deny_packet(topic, packet.tracking_id, reason="again", identity=approver)
        == entry_id
    )
    with pytest.raises(packetbus.PacketbusError) as denied:
        await bus.approve_packet(topic, packet.tracking_id, identity=approver)
    assert denied.value.code == grpc.StatusCode.FAILED_PRECONDITION
    [again] = await bus.dispatch_batch([packet])
    assert again.error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert error_info(again)["carcel_entry_id"] == entry_id
    assert await raw_redis.xlen(f"pb:{{{topic}}}:carcel") == 1
    stats = await bus.policy_stats(topic)
    assert dict(stats.by_decision) == {"held": 1, "denied": 1}
    assert dict(stats.by_reason) == {"spawning needs a guardian": 1, "denied by approver": 1}


async def test_approvals_need_a_registered_approver_signing_after_the_chain(
    bus: packetbus.Client, raw_redis: redis_asyncio.Redis, approver: packetbus.AgentIdentity
) -> None:
    topic = unique("gov")
    packet = spawn_packet(topic)
    await bus.dispatch_batch([packet])
    held = await bus.get_held_packet(topic, packet.tracking_id)
    stub = bus._governance._stub  # the raw RPC, to send entries the client would not build

    async def approve(entry: packetbus.CustodyEntry) -> grpc.StatusCode:
        request = policy_service_pb2.ApprovePacketRequest(
            topic=topic, tracking_id=packet.tracking_id, approval=entry
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ApprovePacket(request)
        return caught.value.code()

    unregistered = packetbus.AgentIdentity.generate(unique(APPROVER))
    assert await approve(decision_entry(held.packet, unregistered, "approved")) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    outsider = packetbus.AgentIdentity.generate(unique("planner"))
    await bus.register_identity(outsider)
    assert await approve(decision_entry(held.packet, outsider, "approved")) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    stale = packetbus.StoredPacket()
    stale.CopyFrom(held.packet)
    del stale.packet.chain_of_custody[-1]
    assert await approve(decision_entry(stale, approver, "approved")) == grpc.StatusCode.ABORTED
    forged = decision_entry(held.packet, approver, "approved")
    forged.signature = bytes(64)
    assert await approve(forged) == grpc.StatusCode.UNAUTHENTICATED
    assert await approve(decision_entry(held.packet, approver, "denied")) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert await approve(packetbus.CustodyEntry()) == grpc.StatusCode.INVALID_ARGUMENT
    # Nothing of it was written.
    assert await raw_redis.xlen(f"pb:{{{topic}}}:held") == 1
    assert await raw_redis.xlen(f"pb:{{{topic}}}:log") == 0

    with pytest.raises(packetbus.PacketbusError) as missing:
        await bus.approve_packet(topic, new_packet(topic).tracking_id, identity=approver)
    assert missing.value.code == grpc.StatusCode.NOT_FOUND


async def test_editing_the_policy_file_changes_decisions_without_a_restart(
    bus: packetbus.Client, policy_file: Path, raw_redis: redis_asyncio.Redis
) -> None:
    topic = unique("gov")
    before = (await bus.get_policy()).version
    [first] = await bus.dispatch_batch([drone_packet(topic, 0.9)])
    assert error_info(first)["rule_id"] == "no-uncertain-drones"

    relaxed = POLICY.replace("entropy = { gt = 0.7 }", "entropy = { gt = 0.95 }")
    version = await set_policy(bus, policy_file, relaxed)
    assert version != before
    [second] = await bus.dispatch_batch([drone_packet(topic, 0.9)])
    assert second.WhichOneof("outcome") == "receipt"

    # A packet rejected under the old policy is still answered as it was.
    [replayed] = await bus.dispatch_batch([drone_packet(topic, 0.9)])
    assert replayed.WhichOneof("outcome") == "receipt"
    assert await raw_redis.xlen(f"pb:{{{topic}}}:carcel") == 1

    # An invalid edit is refused with a clear error; the policy in force stays.
    invalid = relaxed + '\n[[rules]]\nid = "bad"\ndecision = "maybe"\n'
    await asyncio.to_thread(policy_file.write_text, invalid)
    async with asyncio.timeout(5):
        while not (shown := await bus.get_policy()).load_error:  # noqa: ASYNC110 (polling the server)
            await asyncio.sleep(0.02)
    assert "rules[2] (id 'bad')" in shown.load_error
    assert "allow, reject, hold" in shown.load_error
    assert shown.version == version
    [third] = await bus.dispatch_batch([drone_packet(topic, 0.9)])
    assert third.WhichOneof("outcome") == "receipt"
    # Fixed: loaded, the error cleared.
    await set_policy(bus, policy_file, POLICY)
    shown = await bus.get_policy()
    assert shown.load_error == ""
    assert [r.id for r in shown.rules] == ["no-uncertain-drones", "spawn-needs-guardian"]
    assert list(shown.approvers) == ["guardian-*"]


async def test_counts_add_up_across_topics(bus: packetbus.Client) -> None:
    before = await bus.policy_stats()
    topics = [unique("gov"), unique("gov")]
    for topic in topics:
        await bus.dispatch_batch([drone_packet(topic, 0.9), drone_packet(topic, 0.8)])
    after = await bus.policy_stats()
    rule = "no-uncertain-drones"
    assert after.by_rule[rule] - before.by_rule[rule] == 4
    assert after.by_decision["rejected"] - before.by_decision["rejected"] == 4


async def test_an_invalid_policy_file_fails_the_start(redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('[[rules]]\nid = "x"\ndecision = "reject"\n')
    with pytest.raises(ValueError, match="a reject rule needs a reason"):
        await start(ServerConfig(listen="127.0.0.1:0", redis_url=redis_url, policy_file=path))
    with pytest.raises(ValueError, match="No such file"):
        await start(
            ServerConfig(
                listen="127.0.0.1:0", redis_url=redis_url, policy_file=tmp_path / "missing.toml"
            )
        )


async def test_no_policy_means_nothing_is_judged(client: packetbus.Client) -> None:
    shown = await client.get_policy()
    assert not shown.loaded
    assert shown.path == ""
    [result] = await client.dispatch_batch([drone_packet(unique("gov"), 0.99)])
    assert result.WhichOneof("outcome") == "receipt"


async def test_the_policy_cli(
    bus: packetbus.Client,
    governed: tuple[RunningServer, Path],
    approver: packetbus.AgentIdentity,
    tmp_path: Path,
) -> None:
    target = f"127.0.0.1:{governed[0].port}"
    key_file = tmp_path / "guardian.key"
    approver.save(key_file)
    topic = unique("gov")
    first, second = spawn_packet(topic), spawn_packet(topic)
    await bus.dispatch_batch([first, second])

    shown = await asyncio.to_thread(cli, target, "policy", "show")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["version"] == (await bus.get_policy()).version
    held = await asyncio.to_thread(cli, target, "policy", "held", "--topic", topic)
    assert [
        json.loads(line)["packet"]["packet"]["trackingId"] for line in held.stdout.splitlines()
    ] == [
        first.tracking_id,
        second.tracking_id,
    ]
    approved = await asyncio.to_thread(
        cli, target, "policy", "approve", topic, first.tracking_id, "--agent-key", str(key_file)
    )
    assert approved.returncode == 0, approved.stderr
    assert json.loads(approved.stdout)["topic"] == topic
    denied = await asyncio.to_thread(
        cli,
        target,
        "policy",
        "deny",
        topic,
        second.tracking_id,
        "--agent-key",
        str(key_file),
        "--reason",
        "no",
    )
    assert denied.returncode == 0, denied.stderr
    assert json.loads(denied.stdout)["carcelEntryId"]
    stats = await asyncio.to_thread(cli, target, "policy", "stats", "--topic", topic)
    assert json.loads(stats.stdout)["byDecision"] == {"held": "2", "approved": "1", "denied": "1"}

    bad = tmp_path / "bad.toml"
    bad.write_text('[[rules]]\nid = "x"\ndecision = "hold"\n')
    checked = await asyncio.to_thread(cli, target, "policy", "check", str(bad))
    assert checked.returncode == 1
    assert "rules[0] (id 'x'): a hold rule needs a reason" in checked.stderr
    good = tmp_path / "good.toml"
    good.write_text(POLICY)
    checked = await asyncio.to_thread(cli, target, "policy", "check", str(good))
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["version"] == hashlib.sha256(POLICY.encode()).hexdigest()


async def test_a_governance_rejection_is_not_requeued(bus: packetbus.Client) -> None:
    topic = unique("gov")
    [result] = await bus.dispatch_batch([drone_packet(topic, 0.9)])
    with pytest.raises(packetbus.PacketbusError) as caught:
        await bus.requeue_carcel_entry(topic, error_info(result)["carcel_entry_id"])
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "no-uncertain-drones" in caught.value.message
    assert len([e async for e in bus.carcel_entries(topic)]) == 1


def _rebuilt(packet: packetbus.Packet) -> packetbus.Packet:
    """`packet` built again by its producer (after a crash): the same, stamped later."""
    again = packetbus.Packet.FromString(packet.SerializeToString())
    again.dispatched_at.FromNanoseconds(packet.dispatched_at.ToNanoseconds() + 5 * 10**9)
    return again


async def test_a_rebuilt_packet_answers_the_original_decision(
    bus: packetbus.Client, raw_redis: redis_asyncio.Redis, approver: packetbus.AgentIdentity
) -> None:
    topic = unique("gov")
    held, rejected = spawn_packet(topic), drone_packet(topic, 0.9)
    [first_held, first_rejected] = await bus.dispatch_batch([held, rejected])
    assert first_held.WhichOneof("outcome") == "held"
    assert first_rejected.error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]

    [again_held, again_rejected] = await bus.dispatch_batch([_rebuilt(held), _rebuilt(rejected)])
    assert again_held.held == first_held.held
    assert again_rejected.error == first_rejected.error
    assert await raw_redis.xlen(f"pb:{{{topic}}}:held") == 1
    assert await raw_redis.xlen(f"pb:{{{topic}}}:carcel") == 1

    changed = _rebuilt(held)
    changed.data.update({"entropy": 0.2})
    [conflict] = await bus.dispatch_batch([changed])
    assert conflict.error.code == grpc.StatusCode.ALREADY_EXISTS.value[0]

    receipt = await bus.approve_packet(topic, held.tracking_id, identity=approver)
    [after] = await bus.dispatch_batch([_rebuilt(held)])
    assert after.receipt == receipt
    assert await raw_redis.xlen(f"pb:{{{topic}}}:log") == 1
    assert dict((await bus.policy_stats(topic)).by_decision) == {
        "held": 1,
        "rejected": 1,
        "approved": 1,
    }
