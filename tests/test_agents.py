"""The agent registry: registration, heartbeats and liveness, finding, cascades, the watch."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
import redis.asyncio as redis_asyncio

import packetbus
from packetbus import _custody
from packetbus.v1 import agent_service_pb2 as pb
from packetbus.v1 import agent_service_pb2_grpc, custody_pb2
from packetbus.v1 import task_service_pb2 as tpb
from packetbus_server import Limits, RunningServer, ServerConfig, _keys, start
from tests.conftest import unique, verified_actions

JOINED = pb.MEMBERSHIP_EVENT_KIND_JOINED
LEFT = pb.MEMBERSHIP_EVENT_KIND_LEFT
STALE = pb.MEMBERSHIP_EVENT_KIND_STALE
STATE_CHANGED = pb.MEMBERSHIP_EVENT_KIND_STATE_CHANGED
RECOVERED = pb.MEMBERSHIP_EVENT_KIND_RECOVERED
UPDATED = pb.MEMBERSHIP_EVENT_KIND_UPDATED

# Sweeps this often in the servers these tests start, so liveness is seen quickly.
_SWEEP = 0.1


def _limits() -> Limits:
    return Limits(min_ack_deadline_seconds=1, agent_reaper_interval_seconds=_SWEEP)


@pytest.fixture(scope="module")
async def agent_server(redis_url: str) -> AsyncIterator[RunningServer]:
    srv = await start(ServerConfig(listen="127.0.0.1:0", redis_url=redis_url, limits=_limits()))
    yield srv
    await srv.stop(grace=0)


@pytest.fixture
async def bus(agent_server: RunningServer) -> AsyncIterator[packetbus.Client]:
    async with await packetbus.Client.connect(f"127.0.0.1:{agent_server.port}", timeout=10) as c:
        yield c


async def _eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


class Recorder:
    """Collects a watch's events in the background, for the agents a test cares about."""

    def __init__(self, client: packetbus.Client, ids: set[str]) -> None:
        self.ids = ids
        self.events: list[pb.MembershipEvent] = []
        self._client = client
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async for event in self._client.watch_agents():
            if event.agent.id in self.ids:
                self.events.append(event)

    def of(self, agent_id: str) -> list[pb.MembershipEvent]:
        return [e for e in self.events if e.agent.id == agent_id]

    def kinds(self, agent_id: str) -> list[int]:
        return [e.kind for e in self.of(agent_id)]

    async def __aenter__(self) -> Recorder:
        self._task = asyncio.create_task(self._run())
        # The watch starts "from now" once its call is running: register a probe until
        # its JOINED event is seen, so no later event can be missed.
        probe = unique("probe")
        self.ids.add(probe)
        await self._client.register_agent(probe, ttl=60)
        for beat in range(200):
            if self.of(probe):
                break
            # Until the watch runs, each state change is an event it may see.
            await self._client.heartbeat_agent(probe, state=str(beat))
            await asyncio.sleep(0.05)
        await self._client.deregister_agent(probe)
        await _eventually(lambda: _true(self.kinds(probe)[-1:] == [LEFT]))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def _drain(events: AsyncIterator[pb.MembershipEvent]) -> None:
    """Read a watch until it fails (or, a test bug, 10 s pass)."""
    async with asyncio.timeout(10):
        async for _ in events:
            pass


async def _true(value: bool) -> bool:
    return value


async def _task_events(raw: redis_asyncio.Redis, queue: str) -> list[dict[bytes, bytes]]:
    entries: Any = await raw.xrange(_keys.task_events(queue))
    return [fields for _, fields in entries]


# -- acceptance ------------------------------------------------------------------------


async def test_a_silent_agent_goes_stale_its_task_is_claimable_at_once_then_it_leaves(
    bus: packetbus.Client, raw_redis: redis_asyncio.Redis
) -> None:
    silent, other = unique("silent"), unique("other")
    queue = bus.task_queue(unique("queue"))
    async with Recorder(bus, {silent}) as watch:
        registered = await bus.register_agent(
            silent, role="worker", capabilities=["python"], ttl=1, state="idle"
        )
        assert registered.created
        assert registered.agent.liveness == pb.AGENT_LIVENESS_LIVE
        posted = await queue.post(packetbus.Task(id="t-1", description="x"), origin="planner")
        first = await queue.claim(silent, capabilities=["python"], lease_seconds=300)
        assert first is not None
        # A worker that is no agent never holds it while the claim stands.
        assert await queue.claim(other) is None

        # No heartbeat: stale after its 1 s TTL (and a sweep), and the task is back in
        # its queue at once, 300 s before its lease would have run out.
        await _eventually(lambda: _true(STALE in watch.kinds(silent)))
        stale = await bus.get_agent(silent)
        assert stale.liveness == pb.AGENT_LIVENESS_STALE
        await _eventually(lambda: _status_is(queue, "t-1", tpb.TASK_STATUS_QUEUED), timeout=5)
        second = await queue.claim(other, lease_seconds=30)
        assert second is not None
        assert second.task_id == "t-1"
        assert second.fencing_token > first.fencing_token
        # Its worker died holding it: a failed attempt, as a lease that runs out is.
        assert (second.state.claims, second.state.failures) == (2, 1)
        with pytest.raises(packetbus.PacketbusError) as late:
            await first.complete({"answer": 1})
        assert late.value.code == grpc.StatusCode.FAILED_PRECONDITION

        # Stale for another TTL: removed.
        await _eventually(lambda: _true(LEFT in watch.kinds(silent)))
    assert watch.kinds(silent) == [JOINED, STALE, LEFT]
    joined, went_stale, left = watch.of(silent)
    assert joined.agent.capabilities == ["python"]
    assert joined.new_state == "idle"
    assert went_stale.agent.liveness == pb.AGENT_LIVENESS_STALE
    assert "no heartbeat" in went_stale.reason
    assert left.reason.startswith("stale for")
    assert _cursor(joined.cursor) < _cursor(went_stale.cursor) < _cursor(left.cursor)

    with pytest.raises(packetbus.PacketbusError) as gone:
        await bus.heartbeat_agent(silent)
    assert gone.value.code == grpc.StatusCode.NOT_FOUND

    # The release is in the queue's events and, signed, in the task's chain.
    releases = [
        e
        for e in await _task_events(raw_redis, queue.name)
        if e[b"r"] == f"agent {silent} went stale".encode()
    ]
    assert [(e[b"o"], e[b"n"], e[b"a"], e[b"f"]) for e in releases] == [
        (b"claimed", b"queued", silent.encode(), str(first.fencing_token).encode())
    ]
    await second.complete({"answer": 2})
    state = await queue.get("t-1")
    assert state.packet.packet.tracking_id == posted.packet.packet.tracking_id
    assert await verified_actions(bus, state.packet) == [
        "received",
        "dispatched",
        "claimed",
        "released",
        "claimed",
        "completed",
    ]
    released = custody_pb2.CustodyRecord.FromString(state.packet.packet.chain_of_custody[3].record)
    assert released.reason == f"agent {silent} went stale"

    # Nothing of the agent is left behind.
    assert await raw_redis.exists(_keys.agent(silent), _keys.agent_queues(silent)) == 0
    assert await raw_redis.zscore(_keys.AGENT_DEADLINES, silent) is None
    assert await raw_redis.zscore(_keys.AGENT_IDS, silent) is None
    assert await raw_redis.zscore(_keys.AGENTS_RELEASING, silent) is None


async def test_a_task_whose_last_attempt_dies_with_its_agent_goes_to_the_carcel(
    bus: packetbus.Client,
) -> None:
    """Workers that die on a poison task, registered as agents: each release by the
    reaper counts a failed attempt, and the last one carcels it (not queued forever)."""
    name = unique("queue")
    queue = bus.task_queue(name)
    await queue.post(packetbus.Task(id="poison", description="x"), origin="planner", max_attempts=1)
    doomed = unique("doomed")
    await bus.register_agent(doomed, role="worker", ttl=1)
    claimed = await queue.claim(doomed, lease_seconds=300)
    assert claimed is not None
    await _eventually(lambda: _status_is(queue, "poison", tpb.TASK_STATUS_CARCELED), timeout=5)
    state = await queue.get("poison")
    assert (state.claims, state.failures) == (1, 1)
    assert await queue.claim(unique("other")) is None
    [entry] = [e async for e in bus.carcel_entries(name)]
    assert (entry.reason, entry.detail, entry.source, entry.delivery_count) == (
        "max attempts",
        f"agent {doomed} went stale",
        f"queue:{name}",
        1,
    )
    assert (await verified_actions(bus, state.packet))[-2:] == ["claimed", "carceled"]
    assert await queue.results("poison") == []
    # Its worker, back too late: its token no longer holds the task, whatever it sends.
    for late_call in (claimed.fail("boom"), claimed.release("later"), claimed.complete()):
        with pytest.raises(packetbus.PacketbusError) as late:
            await late_call
        assert late.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "moved to the carcel" in late.value.message


def _cursor(cursor: str) -> tuple[int, int]:
    ms, seq = cursor.split("-")
    return int(ms), int(seq)


async def _status_is(queue: packetbus.TaskQueue, task_id: str, status: int) -> bool:
    return (await queue.get(task_id)).status == status


async def test_find_by_capability_returns_exactly_the_live_agents_that_have_it(
    bus: packetbus.Client,
) -> None:
    capability = unique("cap")
    names = {n: unique(n) for n in ("a", "b", "c", "stale", "left", "without")}
    await bus.register_agent(names["a"], capabilities=[capability], ttl=60)
    await bus.register_agent(names["b"], capabilities=["other", capability], ttl=60)
    await bus.register_agent(names["c"], capabilities=[capability, "x"], ttl=60, role="r")
    await bus.register_agent(names["stale"], capabilities=[capability], ttl=1)
    await bus.register_agent(names["left"], capabilities=[capability], ttl=60)
    await bus.register_agent(names["without"], capabilities=["other"], ttl=60)
    assert await bus.deregister_agent(names["left"]) == [names["left"]]
    await _eventually(lambda: _liveness_is(bus, names["stale"], pb.AGENT_LIVENESS_STALE), timeout=5)

    live = sorted(names[n] for n in ("a", "b", "c"))
    found = await bus.list_agents(capability=capability, liveness="live")
    assert [a.id for a in found] == live
    assert all(capability in a.capabilities for a in found)
    # Paged one agent at a time: the same agents, each once.
    paged = await bus.list_agents(capability=capability, liveness="live", page_size=1)
    assert [a.id for a in paged] == live
    stale = await bus.list_agents(capability=capability, liveness="stale")
    assert [a.id for a in stale] == [names["stale"]]
    assert [a.id for a in await bus.list_agents(capability=capability, role="r")] == [names["c"]]
    assert await bus.list_agents(capability=unique("nobody")) == []
    for name in ("a", "b", "c", "without"):
        await bus.deregister_agent(names[name])


async def _liveness_is(client: packetbus.Client, agent_id: str, liveness: int) -> bool:
    return (await client.get_agent(agent_id)).liveness == liveness


# -- registration ----------------------------------------------------------------------


async def test_registering_again_updates_and_a_retry_answers_what_the_first_did(
    bus: packetbus.Client, raw_redis: redis_asyncio.Redis
) -> None:
    agent_id = unique("agent")
    async with Recorder(bus, {agent_id}) as watch:
        first = await bus.register_agent(agent_id, role="coder", capabilities=["py"], ttl=60)
        retry = await bus.register_agent(agent_id, role="coder", capabilities=["py"], ttl=60)
        assert (first.created, retry.created) == (True, True)
        assert retry.agent.registered_at == first.agent.registered_at
        changed = await bus.register_agent(
            agent_id, role="coder", capabilities=["py", "rust"], ttl=60, labels={"zone": "eu"}
        )
        assert not changed.created
        assert list(changed.agent.capabilities) == ["py", "rust"]
        assert dict(changed.agent.labels) == {"zone": "eu"}
        assert changed.agent.registered_at == first.agent.registered_at

        busy = await bus.heartbeat_agent(agent_id, state="busy")
        assert busy.state == "busy"
        again = await bus.heartbeat_agent(agent_id, state="busy")
        assert again.last_heartbeat_at.ToMilliseconds() >= busy.last_heartbeat_at.ToMilliseconds()
        kept = await bus.heartbeat_agent(agent_id)
        assert kept.state == "busy"
        await bus.heartbeat_agent(agent_id, state="idle")
        assert await bus.deregister_agent(agent_id) == [agent_id]
        await _eventually(lambda: _true(LEFT in watch.kinds(agent_id)))
    assert watch.kinds(agent_id) == [JOINED, UPDATED, STATE_CHANGED, STATE_CHANGED, LEFT]
    changes = [(e.old_state, e.new_state) for e in watch.of(agent_id) if e.kind == STATE_CHANGED]
    assert changes == [("", "busy"), ("busy", "idle")]
    assert await raw_redis.exists(_keys.agent(agent_id)) == 0


async def test_a_stale_agent_that_heartbeats_again_recovers(bus: packetbus.Client) -> None:
    agent_id = unique("agent")
    async with Recorder(bus, {agent_id}) as watch:
        await bus.register_agent(agent_id, ttl=2)
        await _eventually(lambda: _true(STALE in watch.kinds(agent_id)))
        back = await bus.heartbeat_agent(agent_id)
        assert back.liveness == pb.AGENT_LIVENESS_LIVE
        await _eventually(lambda: _true(RECOVERED in watch.kinds(agent_id)))
        await bus.deregister_agent(agent_id)
        await _eventually(lambda: _true(LEFT in watch.kinds(agent_id)))
    assert watch.kinds(agent_id) == [JOINED, STALE, RECOVERED, LEFT]


async def test_invalid_registrations_are_refused_with_field_paths_and_nothing_written(
    bus: packetbus.Client, agent_server: RunningServer, raw_redis: redis_asyncio.Redis
) -> None:
    agent_id = unique("agent")
    request = pb.RegisterAgentRequest(
        agent=pb.Agent(
            id=agent_id,
            role="bad\x00role",
            capabilities=["py", "has space", "py"],
            parent_id=agent_id,
            labels={"ok": "fine", "bad": "line\nbreak"},
            heartbeat_ttl_seconds=100_000,
            key_id="mine",
            liveness=pb.AGENT_LIVENESS_LIVE,
        ),
        public_key=b"short",
        public_key_proof=b"x",
    )
    request.agent.deadline.FromMilliseconds(1)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{agent_server.port}") as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.RegisterAgent(request)
    error = packetbus.PacketbusError.from_rpc_error(refused.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted((v.field, v.reason) for v in error.field_violations) == sorted(
        [
            ("agent.role", "CHARSET"),
            ("agent.capabilities[1]", "CHARSET"),
            ("agent.capabilities[2]", "DUPLICATE"),
            ("agent.parent_id", "SELF_PARENT"),
            ("agent.labels['bad']", "CHARSET"),
            ("agent.heartbeat_ttl_seconds", "RANGE"),
            ("agent.key_id", "OUTPUT_ONLY"),
            ("agent.liveness", "OUTPUT_ONLY"),
            ("agent.deadline", "OUTPUT_ONLY"),
            ("public_key", "PUBLIC_KEY"),
            ("public_key_proof", "SIGNATURE_LENGTH"),
        ]
    )
    with pytest.raises(packetbus.PacketbusError) as no_id:
        await bus.register_agent("")
    assert [(v.field, v.reason) for v in no_id.value.field_violations] == [("agent.id", "REQUIRED")]
    with pytest.raises(packetbus.PacketbusError) as too_many:
        await bus.register_agent(agent_id, capabilities=[f"c{i}" for i in range(65)])
    assert [(v.field, v.reason) for v in too_many.value.field_violations] == [
        ("agent.capabilities", "COUNT")
    ]
    for call, field in (
        (bus.heartbeat_agent("two words"), "agent_id"),
        (bus.heartbeat_agent(agent_id, state="a\tb"), "state"),
        (bus.get_agent(""), "agent_id"),
        (bus.deregister_agent("x\ny"), "agent_id"),
        (bus.list_agents(page_size=5000), "page_size"),
        (bus.list_agents(capability="a b"), "capability"),
    ):
        with pytest.raises(packetbus.PacketbusError) as bad:
            await call
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in bad.value.field_violations] == [field]
    with pytest.raises(packetbus.PacketbusError) as bad_cursor:
        await _drain(bus.watch_agents(after_cursor="not-a-cursor"))
    assert bad_cursor.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in bad_cursor.value.field_violations] == ["after_cursor"]

    assert await raw_redis.exists(_keys.agent(agent_id), _keys.agent_children(agent_id)) == 0
    assert await raw_redis.zscore(_keys.AGENT_IDS, agent_id) is None
    events: Any = await raw_redis.xrange(_keys.AGENT_EVENTS, count=100_000)
    assert not [e for _, e in events if e[b"id"] == agent_id.encode()]


async def test_unknown_agents_are_not_found_and_a_parent_must_be_registered(
    bus: packetbus.Client, raw_redis: redis_asyncio.Redis
) -> None:
    nobody = unique("nobody")
    for call in (bus.heartbeat_agent(nobody), bus.get_agent(nobody), bus.deregister_agent(nobody)):
        with pytest.raises(packetbus.PacketbusError) as missing:
            await call
        assert missing.value.code == grpc.StatusCode.NOT_FOUND
    assert await bus.deregister_agent(nobody, allow_missing=True) == []

    child = unique("child")
    with pytest.raises(packetbus.PacketbusError) as orphan:
        await bus.register_agent(child, parent_id=nobody)
    assert orphan.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert await raw_redis.exists(_keys.agent(child), _keys.agent_children(nobody)) == 0
    assert await raw_redis.exists(_keys.agent(nobody)) == 0


async def test_a_cascading_deregistration_removes_every_descendant_and_nothing_else(
    bus: packetbus.Client, raw_redis: redis_asyncio.Redis
) -> None:
    root, a, b, grandchild, bystander = (unique(n) for n in ("root", "a", "b", "g", "by"))
    await bus.register_agent(root, ttl=60)
    await bus.register_agent(a, parent_id=root, ttl=60)
    await bus.register_agent(b, parent_id=root, ttl=60)
    await bus.register_agent(grandchild, parent_id=a, ttl=60)
    await bus.register_agent(bystander, ttl=60)
    children = await bus.list_agents(parent_id=root)
    assert [c.id for c in children] == sorted([a, b])
    # A parent cannot become its own descendant.
    with pytest.raises(packetbus.PacketbusError) as cycle:
        await bus.register_agent(root, parent_id=grandchild, ttl=60)
    assert cycle.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert (await bus.get_agent(root)).parent_id == ""

    async with Recorder(bus, {root, a, b, grandchild}) as watch:
        removed = await bus.deregister_agent(root, cascade=True)
        family = {root, a, b, grandchild}
        await _eventually(
            lambda: _true(len([e for e in watch.events if e.agent.id in family]) == 4)
        )
    events = [e for e in watch.events if e.agent.id in family]
    assert removed[0] == root
    assert sorted(removed) == sorted([root, a, b, grandchild])
    assert [e.kind for e in events] == [LEFT] * 4
    assert sorted((e.agent.id, e.reason) for e in events) == sorted(
        [(root, "deregistered")] + [(x, f"deregistered with {root}") for x in (a, b, grandchild)]
    )
    for agent_id in (root, a, b, grandchild):
        assert await raw_redis.exists(_keys.agent(agent_id), _keys.agent_children(agent_id)) == 0
    assert (await bus.get_agent(bystander)).liveness == pb.AGENT_LIVENESS_LIVE

    # Without cascade, the children stay (naming a parent that left).
    parent, kept = unique("parent"), unique("kept")
    await bus.register_agent(parent, ttl=60)
    await bus.register_agent(kept, parent_id=parent, ttl=60)
    assert await bus.deregister_agent(parent) == [parent]
    assert (await bus.get_agent(kept)).parent_id == parent
    for agent_id in (kept, bystander):
        await bus.deregister_agent(agent_id)
    assert await raw_redis.exists(_keys.agent_children(parent)) == 0


async def test_a_deregistered_agent_gives_its_tasks_back_and_others_keep_theirs(
    bus: packetbus.Client, raw_redis: redis_asyncio.Redis
) -> None:
    leaving, staying = unique("leaving"), unique("staying")
    queue = bus.task_queue(unique("queue"))
    for agent_id in (leaving, staying):
        await bus.register_agent(agent_id, ttl=60)
    for i in range(3):
        await queue.post(packetbus.Task(id=f"t-{i}"), origin="planner")
    held = [await queue.claim(a, lease_seconds=300) for a in (leaving, leaving, staying)]
    assert [h.task_id for h in held if h is not None] == ["t-0", "t-1", "t-2"]
    assert await raw_redis.smembers(_keys.agent_queues(leaving)) == {queue.name.encode()}

    assert await bus.deregister_agent(leaving) == [leaving]
    await _eventually(lambda: _status_is(queue, "t-1", tpb.TASK_STATUS_QUEUED), timeout=5)
    statuses = [(await queue.get(f"t-{i}")).status for i in range(3)]
    assert statuses == [tpb.TASK_STATUS_QUEUED, tpb.TASK_STATUS_QUEUED, tpb.TASK_STATUS_CLAIMED]
    reasons = [e[b"r"] for e in await _task_events(raw_redis, queue.name)]
    assert reasons.count(f"agent {leaving} left".encode()) == 2
    await _eventually(
        lambda: _true_async(raw_redis.exists(_keys.agent_queues(leaving)), 0), timeout=5
    )
    assert await raw_redis.zscore(_keys.AGENTS_RELEASING, leaving) is None
    await bus.deregister_agent(staying)


async def _true_async(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def test_an_agent_registered_with_its_key_signs_its_packets(
    bus: packetbus.Client, agent_server: RunningServer, topic: str
) -> None:
    identity = packetbus.AgentIdentity.generate(unique("signer"))
    registered = await bus.register_agent(identity.agent_id, ttl=60, identity=identity)
    assert registered.agent.key_id == identity.signer.key_id
    keys = {k.key_id: k for k in await bus.signing_keys()}
    assert keys[identity.signer.key_id].owner == identity.agent_id
    async with await packetbus.Client.connect(
        f"127.0.0.1:{agent_server.port}",
        config=packetbus.ClientConfig(identity=identity),
        timeout=10,
    ) as signed:
        packet = packetbus.Packet(
            topic=topic,
            origin=identity.agent_id,
            speech_act=packetbus.SpeechAct.Value("SPEECH_ACT_INFORM"),
        )
        await signed.dispatch(packet)
    verdict = await bus.verify_custody(packet.tracking_id)
    assert verdict.verified
    assert verdict.packet.packet.schema_version == "1.1"
    assert verdict.entries[0].key_id == identity.signer.key_id

    # A proof made with another key than the one registered: refused, nothing written.
    impostor = packetbus.AgentIdentity.generate(unique("impostor"))
    forged = pb.RegisterAgentRequest(
        agent=pb.Agent(id=impostor.agent_id),
        public_key=impostor.signer.public_key,
        public_key_proof=identity.signer.sign(
            b"", _custody.agent_key_message(impostor.agent_id, impostor.signer.public_key)
        ),
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{agent_server.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as unproven:
            await agent_service_pb2_grpc.AgentServiceStub(channel).RegisterAgent(forged)
    assert unproven.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(packetbus.PacketbusError) as absent:
        await bus.get_agent(impostor.agent_id)
    assert absent.value.code == grpc.StatusCode.NOT_FOUND
    assert impostor.signer.key_id not in {k.key_id for k in await bus.signing_keys()}

    # Another key for the same agent needs an endorsement: nothing changes.
    other = packetbus.AgentIdentity.generate(identity.agent_id)
    with pytest.raises(packetbus.PacketbusError) as denied:
        await bus.register_agent(identity.agent_id, ttl=30, identity=other)
    assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert (await bus.get_agent(identity.agent_id)).heartbeat_ttl_seconds == 60
    await bus.deregister_agent(identity.agent_id)


# -- liveness across replicas --------------------------------------------------------


async def test_two_replicas_sweeping_at_once_act_on_each_agent_once(
    bus: packetbus.Client,
    agent_server: RunningServer,
    redis_url: str,
    raw_redis: redis_asyncio.Redis,
) -> None:
    second = await start(ServerConfig(listen="127.0.0.1:0", redis_url=redis_url, limits=_limits()))
    try:
        queue = bus.task_queue(unique("queue"))
        agents = [unique("w") for _ in range(4)]
        async with Recorder(bus, set(agents)) as watch:
            for i, agent_id in enumerate(agents):
                await bus.register_agent(agent_id, ttl=1)
                await queue.post(packetbus.Task(id=f"t-{i}"), origin="planner")
                assert await queue.claim(agent_id, lease_seconds=300) is not None
            reapers = [srv.agent_reaper for srv in (agent_server, second)]
            assert all(r is not None for r in reapers)
            # Besides their own loops, both replicas sweep at once, again and again.
            while not all(LEFT in watch.kinds(a) for a in agents):
                await asyncio.gather(*(r.sweep_once() for r in reapers if r is not None))
                await asyncio.sleep(0.02)
        for agent_id in agents:
            assert watch.kinds(agent_id) == [JOINED, STALE, LEFT]
        events = await _task_events(raw_redis, queue.name)
        releases = sorted(e[b"id"] for e in events if e[b"r"].endswith(b"went stale"))
        assert releases == [f"t-{i}".encode() for i in range(4)]
        for i in range(4):
            state = await queue.get(f"t-{i}")
            assert state.status == tpb.TASK_STATUS_QUEUED
            actions = await verified_actions(bus, state.packet)
            assert actions == ["received", "dispatched", "claimed", "released"]
        assert await raw_redis.zscore(_keys.AGENTS_RELEASING, agents[0]) is None
    finally:
        await second.stop(grace=0)
    assert second.agent_reaper is not None
    assert second.agent_reaper._task is None


# -- the watch -------------------------------------------------------------------------


async def test_a_watch_resumes_after_a_cursor_and_says_when_events_are_gone(
    bus: packetbus.Client, raw_redis: redis_asyncio.Redis
) -> None:
    agent_id = unique("agent")
    async with Recorder(bus, {agent_id}) as watch:
        await bus.register_agent(agent_id, ttl=60)
        await bus.heartbeat_agent(agent_id, state="busy")
        await bus.deregister_agent(agent_id)
        await _eventually(lambda: _true(len(watch.of(agent_id)) == 3))
    joined = watch.of(agent_id)[0]
    resumed: list[pb.MembershipEvent] = []
    async for event in bus.watch_agents(after_cursor=joined.cursor):
        if event.agent.id == agent_id:
            resumed.append(event)
            if len(resumed) == 2:
                break
    assert [(e.kind, e.cursor) for e in resumed] == [
        (e.kind, e.cursor) for e in watch.of(agent_id)[1:]
    ]
    async for first in bus.watch_agents(start="earliest"):
        assert _cursor(first.cursor) <= _cursor(joined.cursor)
        break

    # Retention removed events after an old cursor: the watch says so, not skip them.
    ms = int(joined.cursor.split("-")[0])
    await raw_redis.xtrim(_keys.AGENT_EVENTS, minid=f"{ms + 1}-0", approximate=False)
    with pytest.raises(packetbus.PacketbusError) as lost:
        await _drain(bus.watch_agents(after_cursor=f"{ms - 1}-0"))
    assert lost.value.code == grpc.StatusCode.DATA_LOSS


# -- the client helper and the CLI --------------------------------------------------


async def test_a_live_agent_heartbeats_in_the_background_and_leaves_on_exit(
    bus: packetbus.Client,
) -> None:
    agent_id = unique("live")
    async with Recorder(bus, {agent_id}) as watch:
        async with bus.agent(agent_id, capabilities=["py"], ttl=1, state="idle") as me:
            await asyncio.sleep(2.5)  # more than two TTLs: alive only by heartbeats
            assert (await bus.get_agent(agent_id)).liveness == pb.AGENT_LIVENESS_LIVE
            await me.set_state("busy")
        await _eventually(lambda: _true(LEFT in watch.kinds(agent_id)))
    assert watch.kinds(agent_id) == [JOINED, STATE_CHANGED, LEFT]
    with pytest.raises(packetbus.PacketbusError) as gone:
        await bus.get_agent(agent_id)
    assert gone.value.code == grpc.StatusCode.NOT_FOUND


async def test_the_cli_registers_lists_and_deregisters(
    agent_server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from packetbus._cli import main

    agent_id, capability = unique("cli"), unique("cap")
    target = ["--target", f"127.0.0.1:{agent_server.port}"]
    register = ["agents", "register", agent_id, "--capability", capability, "--ttl", "60"]
    assert await asyncio.to_thread(main, target + register + ["--label", "zone=eu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["created"] is True
    assert printed["agent"]["labels"] == {"zone": "eu"}
    listing = ["agents", "list", "--capability", capability, "--liveness", "live"]
    assert await asyncio.to_thread(main, target + listing) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["id"] for line in lines] == [agent_id]
    beat = ["agents", "heartbeat", agent_id, "--state", "busy"]
    assert await asyncio.to_thread(main, target + beat) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "busy"
    assert await asyncio.to_thread(main, [*target, "agents", "deregister", agent_id]) == 0
    assert capsys.readouterr().out.split() == [agent_id]
    assert await asyncio.to_thread(main, [*target, "agents", "get", agent_id]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


async def test_the_readme_examples_run_as_written(
    agent_server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    import os
    import re
    import shlex
    import sys

    from packetbus._cli import main
    from tests.conftest import REPO

    readme = (REPO / "README.md").read_text()

    def block(name: str) -> str:
        match = re.search(rf"<!-- readme:{name} -->\n```\w+\n(.*?)```", readme, re.S)
        assert match, name
        return match.group(1).strip()

    target = f"127.0.0.1:{agent_server.port}"
    # Only the queue is made unique, so a rerun on the same Redis posts a new task.
    code = block("agents").replace('"crawl"', f'"{unique("crawl")}"')
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        env={**os.environ, "PACKETBUS_TARGET": target},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert "crawler-1" in json.loads(out.decode().replace("'", '"'))

    lines = block("agents-cli").splitlines()
    for line in lines:
        argv = shlex.split(line)
        assert argv[0] == ".venv/bin/packetbus"
        assert await asyncio.to_thread(main, ["--target", target, *argv[1:]]) == 0, line
    printed = capsys.readouterr().out
    assert printed.rstrip().splitlines()[-1] == "crawler-2"
