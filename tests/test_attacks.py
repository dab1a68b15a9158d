"""Issue 14 acceptance: each attack the issue lists, tried by an outsider (no
credential) and by an authenticated principal without the permission, fails with
UNAUTHENTICATED or PERMISSION_DENIED and changes nothing in the store.

The principals (real JWTs, the policy file's `[authorization]` section below):
``mallory`` holds what an ordinary agent needs on every resource (publish,
subscribe, consume, post tasks/findings/records, register agents and keys) but
not agents.act_for, packets.approve, groups.manage or carcel.purge;
``guardian-evil`` may register itself and its key, nothing more; ``approver-1``
may approve held packets (but is not guardian-evil); ``worker-7`` is the victim.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

import packetbus
from packetbus import _custody
from packetbus._approvals import decision_entry
from packetbus.v1 import (
    agent_service_pb2,
    carcel_service_pb2,
    consumer_group_service_pb2,
    custody_pb2,
    custody_service_pb2,
    finding_service_pb2,
    packet_service_pb2,
    policy_service_pb2,
    record_service_pb2,
    task_service_pb2,
)
from tests._access_setup import data_packet, finding_packet, summary_packet, task_packet, unique
from tests._access_world import (
    ADMIN,
    NOBODY,
    NOTHING,
    Door,
    Outcome,
    differences,
    failed,
    open_door,
    per_packet,
    snapshot,
)
from tests._own_store import own_store

# Identity, not storage: one backend (see conftest).
pytestmark = pytest.mark.one_backend

MALLORY, EVIL, APPROVER, VICTIM = "mallory", "guardian-evil", "approver-1", "worker-7"
UNAUTHENTICATED = (grpc.StatusCode.UNAUTHENTICATED, "CREDENTIAL_MISSING")

AUTHORIZATION = """
[authorization]

[[authorization.principals]]
match = "admin"
roles = ["admin"]

[[authorization.principals]]
match = "mallory"
roles = ["insider"]

[[authorization.principals]]
match = "guardian-evil"
roles = ["self"]

[[authorization.principals]]
match = "approver-1"
roles = ["approver"]

[[authorization.principals]]
match = "worker-*"
roles = ["worker", "self"]

[[authorization.principals]]
match = "nobody"
roles = ["none"]

[authorization.roles.admin]
grants = [{ permissions = ["*"], resources = ["*"] }]

[authorization.roles.insider]
grants = [
  { permissions = ["topics.*", "tasks.*", "findings.*", "records.*"], resources = ["*"] },
  { permissions = ["agents.register", "agents.read", "keys.manage"], resources = ["*"] },
  { permissions = ["groups.read", "held.read", "carcel.read"], resources = ["*"] },
]

[authorization.roles.self]
grants = [{ permissions = ["agents.register", "keys.manage"], resources = ["{agent}"] }]

[authorization.roles.approver]
grants = [{ permissions = ["packets.approve", "held.read"], resources = ["*"] }]

[authorization.roles.worker]
grants = [
  { permissions = ["topics.subscribe", "topics.consume"], resources = ["inbox/{agent}"] },
  { permissions = ["topics.publish"], resources = ["*"] },
]

[authorization.roles.none]
grants = [{ permissions = ["policy.read"], resources = ["nothing-is-named-so"] }]
"""

GOVERNED = """
default = "allow"

[[rules]]
id = "hold-held"
decision = "hold"
reason = "needs a human"
topic = "held.*"
"""

STRICT = """
default = "reject"

[[rules]]
id = "admin-sets-up"
decision = "allow"
origin = "admin"
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with own_store(tmp_path_factory.mktemp("attacks-store")) as url:
        yield url


@pytest.fixture(scope="module")
async def door(tmp_path_factory: pytest.TempPathFactory, store: str) -> AsyncIterator[Door]:
    directory = tmp_path_factory.mktemp("attacks-server")
    async with open_door(directory, store, GOVERNED + AUTHORIZATION) as opened:
        yield opened


@pytest.fixture(scope="module")
async def strict(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Door]:
    """A server whose policy's default is reject (only the admin's setup is allowed)."""
    with own_store(tmp_path_factory.mktemp("strict-store")) as url:
        directory = tmp_path_factory.mktemp("strict-server")
        async with open_door(directory, url, STRICT + AUTHORIZATION) as opened:
            yield opened


async def outcome(call: object) -> Outcome:
    """The outcome of awaiting a unary call (Dispatch: its one packet's result)."""
    try:
        response = await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return failed(error)
    if isinstance(response, packet_service_pb2.DispatchResponse):
        (result,) = response.results
        if result.HasField("error"):
            return per_packet(result.error)
    return Outcome(grpc.StatusCode.OK)


def denied(found: Outcome, permission: str, resource: str) -> None:
    assert found.code == grpc.StatusCode.PERMISSION_DENIED, found
    assert found.reason == "PERMISSION_DENIED", found
    assert (found.meta["permission"], found.meta["resource"]) == (permission, resource), found


async def register_key(door: Door, principal: str, agent_id: str) -> Outcome:
    identity = packetbus.AgentIdentity.generate(agent_id)
    message = _custody.agent_key_message(agent_id, identity.signer.public_key)
    request = custody_service_pb2.RegisterAgentKeyRequest(
        agent_id=agent_id,
        public_key=identity.signer.public_key,
        proof=identity.signer.sign(b"", message),
    )
    metadata = door.md(principal) if principal else ()
    return await outcome(door.stubs.custody.RegisterAgentKey(request, metadata=metadata))


# -- dispatch as an agent that has a registered key ------------------------------


async def test_no_one_dispatches_as_an_agent_with_a_registered_key(door: Door) -> None:
    victim = f"{VICTIM}-{uuid.uuid4().hex[:6]}"
    assert (await register_key(door, victim, victim)).code == grpc.StatusCode.OK
    topic = unique("jobs")
    spoofed = packet_service_pb2.DispatchRequest(packets=[data_packet(topic, victim)])

    before = await snapshot(door.redis)
    outsider = await outcome(door.stubs.packets.Dispatch(spoofed))
    assert (outsider.code, outsider.reason) == UNAUTHENTICATED
    # mallory may publish anywhere, but not as another agent.
    spoofing = await outcome(door.stubs.packets.Dispatch(spoofed, metadata=door.md(MALLORY)))
    denied(spoofing, "agents.act_for", victim)
    assert differences(before, await snapshot(door.redis)) == NOTHING

    # The agent itself may.
    own = await outcome(door.stubs.packets.Dispatch(spoofed, metadata=door.md(victim)))
    assert own.code == grpc.StatusCode.OK


# -- register guardian-evil and approve a held packet ----------------------------


async def test_guardian_evil_cannot_approve_a_held_packet(door: Door) -> None:
    topic = unique("held")
    response = await door.stubs.packets.Dispatch(
        packet_service_pb2.DispatchRequest(packets=[data_packet(topic, ADMIN)]),
        metadata=door.md(ADMIN),
    )
    (result,) = response.results
    assert result.HasField("held"), result
    tracking_id = result.tracking_id
    held = await door.admin.get_held_packet(topic, tracking_id)
    evil = packetbus.AgentIdentity.generate(EVIL)
    approval = policy_service_pb2.ApprovePacketRequest(
        topic=topic,
        tracking_id=tracking_id,
        approval=decision_entry(held.packet, evil, _custody.APPROVED, reason="trust me"),
    )

    before = await snapshot(door.redis)
    assert (await register_key(door, "", EVIL)).code == grpc.StatusCode.UNAUTHENTICATED
    outsider = await outcome(door.stubs.policy.ApprovePacket(approval))
    assert (outsider.code, outsider.reason) == UNAUTHENTICATED
    for principal in (MALLORY, EVIL):
        approving = await outcome(
            door.stubs.policy.ApprovePacket(approval, metadata=door.md(principal))
        )
        denied(approving, "packets.approve", topic)
    assert differences(before, await snapshot(door.redis)) == NOTHING

    # guardian-evil registers itself and its key (its own: allowed) and still may
    # not approve; an approver may not sign as guardian-evil.
    message = _custody.agent_key_message(EVIL, evil.signer.public_key)
    registered = await outcome(
        door.stubs.custody.RegisterAgentKey(
            custody_service_pb2.RegisterAgentKeyRequest(
                agent_id=EVIL,
                public_key=evil.signer.public_key,
                proof=evil.signer.sign(b"", message),
            ),
            metadata=door.md(EVIL),
        )
    )
    assert registered.code == grpc.StatusCode.OK
    before = await snapshot(door.redis)
    approving = await outcome(door.stubs.policy.ApprovePacket(approval, metadata=door.md(EVIL)))
    denied(approving, "packets.approve", topic)
    as_evil = await outcome(door.stubs.policy.ApprovePacket(approval, metadata=door.md(APPROVER)))
    denied(as_evil, "agents.act_for", EVIL)
    assert differences(before, await snapshot(door.redis)) == NOTHING

    # Still held, its chain approved by no one.
    still = await door.admin.get_held_packet(topic, tracking_id)
    actions = [
        custody_pb2.CustodyRecord.FromString(e.record).action
        for e in still.packet.packet.chain_of_custody
    ]
    assert _custody.APPROVED not in actions
    lookup = await outcome(
        door.stubs.packets.GetPacket(
            packet_service_pb2.GetPacketRequest(tracking_id=tracking_id), metadata=door.md(ADMIN)
        )
    )
    assert lookup.code == grpc.StatusCode.NOT_FOUND


# -- overwrite and deregister another agent's registration -----------------------


async def test_no_one_overwrites_or_deregisters_another_agents_registration(door: Door) -> None:
    victim = f"{VICTIM}-{uuid.uuid4().hex[:6]}"
    mine = agent_service_pb2.Agent(id=victim, role="worker", heartbeat_ttl_seconds=3600)
    registered = await outcome(
        door.stubs.agents.RegisterAgent(
            agent_service_pb2.RegisterAgentRequest(agent=mine), metadata=door.md(victim)
        )
    )
    assert registered.code == grpc.StatusCode.OK
    overwrite = agent_service_pb2.RegisterAgentRequest(
        agent=agent_service_pb2.Agent(id=victim, role="evil", heartbeat_ttl_seconds=3600)
    )
    deregister = agent_service_pb2.DeregisterAgentRequest(agent_id=victim)

    before = await snapshot(door.redis)
    for call in (
        door.stubs.agents.RegisterAgent(overwrite),
        door.stubs.agents.DeregisterAgent(deregister),
    ):
        found = await outcome(call)
        assert (found.code, found.reason) == UNAUTHENTICATED
    # mallory may register agents, but only those it may act as.
    denied(
        await outcome(door.stubs.agents.RegisterAgent(overwrite, metadata=door.md(MALLORY))),
        "agents.act_for",
        victim,
    )
    denied(
        await outcome(door.stubs.agents.DeregisterAgent(deregister, metadata=door.md(MALLORY))),
        "agents.act_for",
        victim,
    )
    assert differences(before, await snapshot(door.redis)) == NOTHING
    got = await door.stubs.agents.GetAgent(
        agent_service_pb2.GetAgentRequest(agent_id=victim), metadata=door.md(ADMIN)
    )
    assert got.agent.role == "worker"


# -- delete a consumer group -----------------------------------------------------


async def test_no_one_deletes_a_consumer_group_without_groups_manage(door: Door) -> None:
    topic = unique("jobs")
    await door.admin.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
    request = consumer_group_service_pb2.DeleteConsumerGroupRequest(topic=topic, name="g")

    before = await snapshot(door.redis)
    outsider = await outcome(door.stubs.groups.DeleteConsumerGroup(request))
    assert (outsider.code, outsider.reason) == UNAUTHENTICATED
    denied(
        await outcome(door.stubs.groups.DeleteConsumerGroup(request, metadata=door.md(MALLORY))),
        "groups.manage",
        topic,
    )
    assert differences(before, await snapshot(door.redis)) == NOTHING
    assert (await door.admin.get_consumer_group(topic, "g")).name == "g"


# -- purge the carcel ------------------------------------------------------------


async def test_no_one_purges_the_carcel_without_carcel_purge(door: Door) -> None:
    topic = unique("jobs")
    await door.admin.create_consumer_group(
        topic, "g", start=packetbus.EARLIEST, max_delivery_attempts=1
    )
    await door.admin.dispatch(data_packet(topic, ADMIN))
    async with door.admin.consume(topic, "g", consumer=ADMIN) as consumer:
        delivery = await anext(consumer)
        [settled] = await delivery.nack(reason="poison")
    assert settled.carcel_id
    purge = carcel_service_pb2.PurgeCarcelEntriesRequest(topic=topic, ids=[settled.carcel_id])
    purge_all = carcel_service_pb2.PurgeCarcelEntriesRequest(topic=topic)

    before = await snapshot(door.redis)
    for request in (purge, purge_all):
        outsider = await outcome(door.stubs.carcel.PurgeCarcelEntries(request))
        assert (outsider.code, outsider.reason) == UNAUTHENTICATED
        denied(
            await outcome(door.stubs.carcel.PurgeCarcelEntries(request, metadata=door.md(MALLORY))),
            "carcel.purge",
            topic,
        )
    assert differences(before, await snapshot(door.redis)) == NOTHING
    assert [e.id async for e in door.admin.carcel_entries(topic)] == [settled.carcel_id]


# -- read another agent's inbox and ack its messages -----------------------------


def pull_request(topic: str, consumer: str) -> consumer_group_service_pb2.PullRequest:
    return consumer_group_service_pb2.PullRequest(
        subscription=consumer_group_service_pb2.PullSubscription(
            topic=topic, group="inbox", consumer=consumer, max_outstanding_packets=10
        )
    )


async def pulled(door: Door, principal: str | None, topic: str) -> tuple[Outcome, list[str]]:
    """Pull once from `topic`'s inbox group as `principal`: (outcome, delivery ids)."""
    metadata = door.md(principal) if principal else ()
    stream = door.stubs.groups.Pull(metadata=metadata, timeout=10)
    try:
        await stream.write(pull_request(topic, principal or "anyone"))
        response = await stream.read()
    except grpc.aio.AioRpcError as error:
        return failed(error), []
    finally:
        stream.cancel()
    return Outcome(grpc.StatusCode.OK), [d.delivery_id for d in response.deliveries]


async def subscribed(door: Door, principal: str | None, topic: str) -> Outcome:
    metadata = door.md(principal) if principal else ()
    request = packet_service_pb2.SubscribeRequest(
        topic=topic, start_position=packet_service_pb2.START_POSITION_EARLIEST
    )
    stream = door.stubs.packets.Subscribe(request, metadata=metadata, timeout=10)
    try:
        await stream.read()
    except grpc.aio.AioRpcError as error:
        return failed(error)
    finally:
        stream.cancel()
    return Outcome(grpc.StatusCode.OK)


async def test_no_one_reads_another_agents_inbox_or_acks_its_messages(door: Door) -> None:
    victim = f"{VICTIM}-{uuid.uuid4().hex[:6]}"
    inbox = packetbus.inbox_topic(victim)
    await door.admin.create_consumer_group(inbox, "inbox", start=packetbus.EARLIEST)
    await door.admin.dispatch(data_packet(inbox, ADMIN))

    before = await snapshot(door.redis)
    for principal in (None, MALLORY):
        for found in (
            await subscribed(door, principal, inbox),
            (await pulled(door, principal, inbox))[0],
        ):
            if principal is None:
                assert (found.code, found.reason) == UNAUTHENTICATED
            else:
                assert (found.code, found.reason) == (
                    grpc.StatusCode.PERMISSION_DENIED,
                    "PERMISSION_DENIED",
                ), found
    assert differences(before, await snapshot(door.redis)) == NOTHING

    # The agent gets its message; no one else may settle the delivery.
    code, ids = await pulled(door, victim, inbox)
    assert code.code == grpc.StatusCode.OK
    assert len(ids) == 1
    ack = consumer_group_service_pb2.AcknowledgeRequest(
        topic=inbox, group="inbox", delivery_ids=ids
    )
    before = await snapshot(door.redis)
    outsider = await outcome(door.stubs.groups.Acknowledge(ack))
    assert (outsider.code, outsider.reason) == UNAUTHENTICATED
    acking = await outcome(door.stubs.groups.Acknowledge(ack, metadata=door.md(MALLORY)))
    assert (acking.code, acking.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    assert differences(before, await snapshot(door.redis)) == NOTHING
    own = await door.stubs.groups.Acknowledge(ack, metadata=door.md(victim))
    assert [r.settlement for r in own.results] == [consumer_group_service_pb2.SETTLEMENT_ACK]


# -- post tasks, findings and records while the policy's default is reject -------


def task_request(origin: str) -> task_service_pb2.PostTaskRequest:
    return task_service_pb2.PostTaskRequest(packet=task_packet(unique("queue"), origin))


def finding_request(origin: str) -> finding_service_pb2.PostFindingRequest:
    return finding_service_pb2.PostFindingRequest(packet=finding_packet(unique("task"), origin))


def record_request(origin: str) -> record_service_pb2.PutRecordRequest:
    return record_service_pb2.PutRecordRequest(packet=summary_packet(origin))


# Where a governance rejection may leave its trace (the carcel, the decision log,
# the counts, the topic index, and the idempotency record saying "rejected", so a
# retry is answered the same): nothing else.
GOVERNANCE_KEYS = (b":carcel", b":decisions", b":polstats", b"pb:topics")


def governance_trace(key: bytes, value: object) -> bool:
    if any(part in key for part in GOVERNANCE_KEYS):
        return True
    return b":pkt:" in key and b"rejected:" in repr(value).encode()


async def test_tasks_findings_and_records_are_governed_when_the_default_is_reject(
    strict: Door,
) -> None:
    posts = [
        ("tasks.post", strict.stubs.tasks.PostTask, task_request),
        ("findings.post", strict.stubs.findings.PostFinding, finding_request),
        ("records.write", strict.stubs.records.PutRecord, record_request),
    ]
    for permission, method, build in posts:
        before = await snapshot(strict.redis)
        outsider = await outcome(method(build(MALLORY)))
        assert (outsider.code, outsider.reason) == UNAUTHENTICATED
        request = build(NOBODY)
        found = await outcome(method(request, metadata=strict.md(NOBODY)))
        assert found.code == grpc.StatusCode.PERMISSION_DENIED, found
        assert found.meta["permission"] == permission, found
        assert differences(before, await snapshot(strict.redis)) == NOTHING

        # mallory holds the permission; the policy refuses the post.
        rejected = await outcome(method(build(MALLORY), metadata=strict.md(MALLORY)))
        assert rejected.code == grpc.StatusCode.PERMISSION_DENIED, rejected
        assert rejected.reason == "POLICY_REJECTED", rejected
        after = await snapshot(strict.redis)
        change = differences(before, after)
        assert change["removed"] == [], change
        written = change["added"] + change["changed"]
        assert all(governance_trace(key, after[key]) for key in written), written
