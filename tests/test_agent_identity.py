"""Identity binds agents, keys and approvals (issue 14, item 4): an agent id is
registered, re-registered or deregistered only by a principal that may act as it;
an agent's keys are bound to the principal that registered them; an approval's
signing approver must be an agent the caller may act as.

Real server on loopback, real store; principals from real bearer JWTs, their grants
from the policy file's `[authorization]` section (tests/_identities.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as redis_asyncio
from google.rpc import error_details_pb2

import packetbus
from packetbus import _custody
from packetbus._approvals import decision_entry
from packetbus.v1 import agent_service_pb2, policy_service_pb2
from packetbus_server import Limits, RunningServer
from packetbus_server._agent_store import AgentStore, Unchecked
from tests._identities import Issuer, client_as, guarded_fixtures, spiffe
from tests._store_keys import key_names, new_keys
from tests.conftest import unique
from tests.test_policy import spawn_packet

# Agent ids are unique per module run: the store is shared by every test of a session.
RUN = unique("id").replace(".", "-")
ALICE, BOB = f"alice-{RUN}", f"bob-{RUN}"
COORDINATOR, MALLORY, GUARDIAN = f"coord-{RUN}", f"mallory-{RUN}", f"guardian-{RUN}"
EVIL = f"guardian-evil-{RUN}"

POLICY = """
default = "allow"

[approval]
approvers = ["guardian-*"]

[[rules]]
id = "spawn-needs-guardian"
decision = "hold"
reason = "spawning needs a guardian"
topic = "idgov.*"
speech_act = "REQUEST"
fields = { primitive = "logistics.spawn" }
"""

# Everyone may register agents and manage keys of any id (the gate's part): what
# tells them apart is whom each may act as.
_EVERYONE = [
    ("agents.register", "*"),
    ("agents.read", "*"),
    ("keys.manage", "*"),
    ("held.read", "*"),
    ("topics.publish", "*"),
    ("topics.subscribe", "*"),
    ("audit.export", "*"),
]
GRANTS = {
    spiffe(ALICE): _EVERYONE,
    spiffe(BOB): _EVERYONE,
    spiffe(COORDINATOR): [*_EVERYONE, ("agents.act_for", f"worker-{RUN}-*")],
    spiffe(MALLORY): [*_EVERYONE, ("packets.approve", "idgov.*")],
    spiffe(GUARDIAN): [*_EVERYONE, ("packets.approve", "idgov.*")],
}


issuer, guarded = guarded_fixtures(GRANTS, "identity", POLICY)


@pytest.fixture
async def as_agent(
    guarded: RunningServer, issuer: Issuer
) -> AsyncIterator[dict[str, packetbus.Client]]:
    """A client per agent, each calling with a token for that agent's principal."""
    target = f"127.0.0.1:{guarded.port}"
    clients = {
        agent: await client_as(target, issuer.token(spiffe(agent)))
        for agent in (ALICE, BOB, COORDINATOR, MALLORY, GUARDIAN)
    }
    yield clients
    for c in clients.values():
        await c.close()


def denial_info(error: packetbus.PacketbusError) -> dict[str, str]:
    """The ErrorInfo of a refusal: its reason and metadata."""
    assert error.status is not None
    for detail in error.status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return {"reason": info.reason, "domain": info.domain, **info.metadata}
    raise AssertionError(f"no ErrorInfo in {error.status}")


def acting_denied(who: str, agent_id: str) -> dict[str, str]:
    return {
        "reason": "PERMISSION_DENIED",
        "domain": "packetbus",
        "permission": "agents.act_for",
        "resource": agent_id,
        "principal": spiffe(who),
    }


async def registry_of(client: packetbus.Client, agent_id: str) -> agent_service_pb2.Agent:
    agent = await client.get_agent(agent_id)
    agent.ClearField("liveness")  # judged at read time
    return agent


# -- registration ----------------------------------------------------------------------


async def test_another_principals_agent_cannot_be_overwritten_heartbeaten_or_deregistered(
    as_agent: dict[str, packetbus.Client], raw_redis: redis_asyncio.Redis
) -> None:
    alice, bob = as_agent[ALICE], as_agent[BOB]
    created = await alice.register_agent(ALICE, role="planner", labels={"team": "a"})
    assert created.created
    before = await registry_of(alice, ALICE)
    keys_before = await key_names(raw_redis)

    with pytest.raises(packetbus.PacketbusError) as overwrite:
        await bob.register_agent(ALICE, role="impostor", endpoint="tcp://bob")
    assert overwrite.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert denial_info(overwrite.value) == acting_denied(BOB, ALICE)

    with pytest.raises(packetbus.PacketbusError) as heartbeat:
        await bob.heartbeat_agent(ALICE, state="hijacked")
    assert heartbeat.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert denial_info(heartbeat.value) == acting_denied(BOB, ALICE)

    for cascade in (False, True):
        with pytest.raises(packetbus.PacketbusError) as deregister:
            await bob.deregister_agent(ALICE, cascade=cascade)
        assert deregister.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert denial_info(deregister.value) == acting_denied(BOB, ALICE)

    # Registering an agent id no one holds yet, as someone else: refused too.
    unclaimed = f"carol-{RUN}"
    with pytest.raises(packetbus.PacketbusError) as squat:
        await bob.register_agent(unclaimed)
    assert denial_info(squat.value) == acting_denied(BOB, unclaimed)

    # The registry is as Alice left it: nothing written by any refused call.
    assert await registry_of(alice, ALICE) == before
    assert await new_keys(raw_redis, keys_before) == set()
    with pytest.raises(packetbus.PacketbusError) as missing:
        await alice.get_agent(unclaimed)
    assert missing.value.code == grpc.StatusCode.NOT_FOUND

    # Alice herself may do all of it.
    assert (await alice.heartbeat_agent(ALICE, state="busy")).state == "busy"
    assert not (await alice.register_agent(ALICE, role="planner")).created
    assert await alice.deregister_agent(ALICE) == [ALICE]


async def test_a_coordinator_registers_and_deregisters_the_agents_it_acts_for(
    as_agent: dict[str, packetbus.Client], raw_redis: redis_asyncio.Redis
) -> None:
    coordinator, bob = as_agent[COORDINATOR], as_agent[BOB]
    worker, helper = f"worker-{RUN}-1", f"worker-{RUN}-2"
    await coordinator.register_agent(COORDINATOR, role="coordinator")
    await coordinator.register_agent(worker, parent_id=COORDINATOR)
    await coordinator.register_agent(helper, parent_id=worker)
    assert (await coordinator.heartbeat_agent(worker, state="idle")).state == "idle"

    # Bob attaches his own agent below the coordinator's worker: a cascade from the
    # coordinator would remove it, and the coordinator may not act as Bob.
    await bob.register_agent(BOB, parent_id=worker)
    keys_before = await key_names(raw_redis)
    with pytest.raises(packetbus.PacketbusError) as cascade:
        await coordinator.deregister_agent(COORDINATOR, cascade=True)
    assert cascade.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert denial_info(cascade.value) == acting_denied(COORDINATOR, BOB)
    for agent_id in (COORDINATOR, worker, helper, BOB):
        assert (await coordinator.get_agent(agent_id)).id == agent_id  # none removed
    assert await new_keys(raw_redis, keys_before) == set()

    # Without Bob's agent below it, the cascade is the coordinator's to make.
    assert await bob.deregister_agent(BOB) == [BOB]
    removed = await coordinator.deregister_agent(COORDINATOR, cascade=True)
    assert sorted(removed) == sorted([COORDINATOR, worker, helper])


# -- keys ------------------------------------------------------------------------------


async def test_an_agents_keys_are_bound_to_the_principal_that_registered_them(
    as_agent: dict[str, packetbus.Client], raw_redis: redis_asyncio.Redis
) -> None:
    alice, bob = as_agent[ALICE], as_agent[BOB]
    agent_id = f"{ALICE}-signer"
    # Not Alice's own agent id, but no one holds its keys yet: her keys.manage
    # registers the first one, and binds the agent's keys to her.
    first = packetbus.AgentIdentity.generate(agent_id)
    assert (await alice.register_identity(first)).owner == agent_id
    assert await raw_redis.hget("pb:{keys}:principals", agent_id) == spiffe(ALICE).encode()
    # A retry by the same principal answers the same key (idempotent).
    assert (await alice.register_identity(first)).key_id == first.signer.key_id

    keys_before = await key_names(raw_redis)
    principals_before = await raw_redis.hgetall("pb:{keys}:principals")
    agent_keys_before = await raw_redis.hget("pb:{keys}:agents", agent_id)
    # Bob holds keys.manage on every agent id, and still may not: not the key again,
    # not a new key, not even one endorsed (he would need the agent's key for that).
    with pytest.raises(packetbus.PacketbusError) as same:
        await bob.register_identity(first)
    assert same.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert denial_info(same.value) == acting_denied(BOB, agent_id)
    hijack = packetbus.AgentIdentity.generate(agent_id)
    with pytest.raises(packetbus.PacketbusError) as new:
        await bob.register_identity(hijack)
    assert denial_info(new.value) == acting_denied(BOB, agent_id)
    with pytest.raises(packetbus.PacketbusError) as endorsed:
        await bob.endorse_identity(hijack, first)
    assert denial_info(endorsed.value) == acting_denied(BOB, agent_id)
    assert await new_keys(raw_redis, keys_before) == set()
    assert await raw_redis.hgetall("pb:{keys}:principals") == principals_before
    assert await raw_redis.hget("pb:{keys}:agents", agent_id) == agent_keys_before
    keys = {k.key_id for k in await alice.signing_keys()}
    assert hijack.signer.key_id not in keys


async def test_a_principal_that_acts_for_the_agent_may_rotate_its_key(
    as_agent: dict[str, packetbus.Client], raw_redis: redis_asyncio.Redis
) -> None:
    coordinator, bob = as_agent[COORDINATOR], as_agent[BOB]
    worker = f"worker-{RUN}-keys"
    old = packetbus.AgentIdentity.generate(worker)
    # Registered with the agent: its key is bound to the registering coordinator.
    await coordinator.register_agent(worker, identity=old)
    assert await raw_redis.hget("pb:{keys}:principals", worker) == spiffe(COORDINATOR).encode()
    with pytest.raises(packetbus.PacketbusError) as outsider:
        await bob.register_identity(old)
    assert denial_info(outsider.value) == acting_denied(BOB, worker)

    # Rotation rules stay as they are: a new key needs the old one's endorsement.
    new = packetbus.AgentIdentity.generate(worker)
    with pytest.raises(packetbus.PacketbusError) as unendorsed:
        await coordinator.register_identity(new)
    assert unendorsed.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "endorse" in unendorsed.value.message
    rotated = await coordinator.endorse_identity(new, old)
    assert rotated.key_id == new.signer.key_id
    # The binding stays with the first principal.
    assert await raw_redis.hget("pb:{keys}:principals", worker) == spiffe(COORDINATOR).encode()


# -- approvals -------------------------------------------------------------------------


async def test_registering_guardian_evil_and_approving_fails_twice_over(
    as_agent: dict[str, packetbus.Client], raw_redis: redis_asyncio.Redis
) -> None:
    mallory, guardian = as_agent[MALLORY], as_agent[GUARDIAN]
    topic = unique("idgov")
    packet = spawn_packet(topic)
    packet.origin = MALLORY  # her own: a packet names its sender (issue 14 item 4)
    [result] = await mallory.dispatch_batch([packet])
    assert result.WhichOneof("outcome") == "held"

    # Once: Mallory may not register an agent that is not hers, approver-looking or not.
    evil = packetbus.AgentIdentity.generate(EVIL)
    keys_before = await key_names(raw_redis)
    with pytest.raises(packetbus.PacketbusError) as registered:
        await mallory.register_agent(EVIL, role="guardian", identity=evil)
    assert registered.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert denial_info(registered.value) == acting_denied(MALLORY, EVIL)
    assert await new_keys(raw_redis, keys_before) == set()
    assert await raw_redis.hget("pb:{keys}:agents", EVIL) is None

    # Twice: with the key registered anyway (keys.manage, first come), she holds
    # packets.approve on the topic and the approvers' glob matches guardian-evil;
    # the approval still is not hers to give.
    await mallory.register_identity(evil)
    held = await mallory.get_held_packet(topic, packet.tracking_id)
    entry = decision_entry(held.packet, evil, _custody.APPROVED)
    request = policy_service_pb2.ApprovePacketRequest(
        topic=topic, tracking_id=packet.tracking_id, approval=entry
    )
    keys_before = await key_names(raw_redis)
    with pytest.raises(grpc.aio.AioRpcError) as approved:
        await mallory._governance._stub.ApprovePacket(request)
    assert approved.value.code() == grpc.StatusCode.PERMISSION_DENIED
    refusal = packetbus.PacketbusError.from_rpc_error(approved.value)
    assert denial_info(refusal) == acting_denied(MALLORY, EVIL)
    with pytest.raises(packetbus.PacketbusError) as denied:
        await mallory.deny_packet(topic, packet.tracking_id, reason="mine", identity=evil)
    assert denial_info(denied.value) == acting_denied(MALLORY, EVIL)

    # Nothing written; the packet is still held.
    assert await new_keys(raw_redis, keys_before) == set()
    assert await raw_redis.xlen(f"pb:{{{topic}}}:held") == 1
    assert await raw_redis.xlen(f"pb:{{{topic}}}:log") == 0
    assert await raw_redis.exists(f"pb:{{{topic}}}:carcel") == 0
    assert (await mallory.get_held_packet(topic, packet.tracking_id)).rule_id == (
        "spawn-needs-guardian"
    )

    # The guardian approves as itself; the server's "dispatched" hop names its principal.
    guardian_identity = packetbus.AgentIdentity.generate(GUARDIAN)
    await guardian.register_agent(GUARDIAN, role="guardian", identity=guardian_identity)
    await guardian.approve_packet(topic, packet.tracking_id, identity=guardian_identity)
    assert await raw_redis.xlen(f"pb:{{{topic}}}:held") == 0
    stored = await guardian.get_packet(packet.tracking_id)
    keys = {k.key_id: k for k in await guardian.signing_keys()}
    report = _custody.verify_chain(
        tracking_id=packet.tracking_id,
        content=stored.content,
        chain=stored.packet.chain_of_custody,
        keys=keys,
        head=stored.custody_head,
    )
    assert report.verified, report.failures()
    assert [(e.action, e.principal) for e in report.entries] == [
        ("received", spiffe(MALLORY)),
        ("held", spiffe(MALLORY)),
        ("approved", ""),  # signed by the guardian agent itself: no principal field
        ("dispatched", spiffe(GUARDIAN)),
    ]
    assert report.entries[2].actor == GUARDIAN


async def test_a_cascade_removes_only_the_descendants_whose_right_was_checked(
    as_agent: dict[str, packetbus.Client], raw_redis: redis_asyncio.Redis
) -> None:
    """An agent attached below between the service's check of each descendant and the
    script's run (a race) is not removed unchecked: the script refuses, nothing
    written, and the service looks again."""
    coordinator = as_agent[COORDINATOR]
    root, child = f"worker-{RUN}-root", f"worker-{RUN}-late"
    await coordinator.register_agent(root)
    await coordinator.register_agent(child, parent_id=root)
    store = AgentStore(raw_redis, Limits(), retry_budget=5)
    keys_before = await key_names(raw_redis)
    assert await store.deregister(root, cascade=True, checked=[]) == Unchecked(child)
    assert [(await coordinator.get_agent(a)).id for a in (root, child)] == [root, child]
    assert await new_keys(raw_redis, keys_before) == set()
    assert await store.deregister(root, cascade=True, checked=[child]) == [root, child]
