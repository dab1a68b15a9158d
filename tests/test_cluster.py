"""The same server code on a local 3-primary Valkey cluster (keys spread over slots and nodes)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from redis.asyncio.cluster import RedisCluster

import packetbus
from packetbus_server import ServerConfig, start
from tests._cluster import start_cluster, stop_cluster
from tests._store_keys import key_names, new_keys
from tests.conftest import REPO, new_packet, unique

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster_url(valkey_cluster: str) -> str:
    """The session's local 3-primary cluster (tests/_cluster.py), the suite's "cluster" backend."""
    return valkey_cluster


@pytest.fixture(scope="module")
async def cluster_target(cluster_url: str) -> AsyncIterator[str]:
    srv = await start(ServerConfig(listen="127.0.0.1:0", redis_url=cluster_url))
    assert isinstance(srv.store.redis, RedisCluster)
    yield f"127.0.0.1:{srv.port}"
    await srv.stop(grace=0)


@pytest.fixture
async def cluster(cluster_url: str) -> AsyncIterator[RedisCluster]:
    client = RedisCluster.from_url(cluster_url)
    await client.initialize()
    yield client
    await client.aclose()


async def test_batches_across_topics_on_several_nodes_are_idempotent(
    cluster_target: str, cluster: RedisCluster
) -> None:
    topics = [unique("c") for _ in range(12)]
    packets = [new_packet(topics[i % 12]) for i in range(600)]
    async with await packetbus.Client.connect(cluster_target) as client:
        first = await client.dispatch_batch(packets)
        again = await client.dispatch_batch(packets)  # a retry of the whole batch
        copies = [packetbus.Packet.FromString(packets[0].SerializeToString()) for _ in range(5)]
        concurrent = await asyncio.gather(*(client.dispatch_batch([c]) for c in copies))

        assert [r.WhichOneof("outcome") for r in first] == ["receipt"] * 600
        assert first == again
        assert {r.SerializeToString() for [r] in concurrent} == {first[0].SerializeToString()}

        moved = packetbus.Packet.FromString(packets[1].SerializeToString())
        moved.topic = unique("elsewhere")
        [conflict] = await client.dispatch_batch([moved])
        assert conflict.error.code == grpc.StatusCode.ALREADY_EXISTS.value[0]

        stored = await client.get_packet(packets[7].tracking_id)
        assert stored.packet.tracking_id == packets[7].tracking_id
        assert stored.receipt == first[7].receipt

    nodes = {str(cluster.get_node_from_key(f"pb:{{{t}}}:log")) for t in topics}
    assert len(nodes) > 1  # the topics really are spread over the cluster
    lengths = [int(await cluster.xlen(f"pb:{{{t}}}:log")) for t in topics]
    assert lengths == [50] * 12


async def test_subscribe_and_resume_on_a_cluster(cluster_target: str) -> None:
    topic = unique("c")
    packets = [new_packet(topic) for _ in range(30)]
    async with await packetbus.Client.connect(cluster_target) as client:
        await client.dispatch_batch(packets)
        got: list[packetbus.StoredPacket] = []
        async with client.subscribe(topic, start=packetbus.EARLIEST) as subscription:
            async for stored in subscription:
                got.append(stored)
                if len(got) == 30:
                    break
        assert [s.packet.tracking_id for s in got] == [p.tracking_id for p in packets]
        rest: list[packetbus.StoredPacket] = []
        async with client.subscribe(topic, after=got[9].receipt.cursor) as subscription:
            async for stored in subscription:
                rest.append(stored)
                if len(rest) == 20:
                    break
        assert [s.packet.tracking_id for s in rest] == [p.tracking_id for p in packets[10:]]


async def test_invalid_packet_writes_nothing_on_a_cluster(
    cluster_target: str, cluster: RedisCluster
) -> None:
    before = await key_names(cluster)
    packet = new_packet(unique("c"), ttl_seconds=999_999)
    packet.origin = ""
    packet.finding.claim = "x"
    packet.finding.confidence = -1
    async with await packetbus.Client.connect(cluster_target) as client:
        with pytest.raises(packetbus.PacketbusError) as caught:
            await client.dispatch(packet)
    assert sorted(v.field for v in caught.value.field_violations) == [
        "finding.confidence",
        "origin",
        "ttl_seconds",
    ]
    assert await new_keys(cluster, before) == set()


async def test_groups_tasks_and_findings_on_a_cluster(cluster_target: str) -> None:
    async with await packetbus.Client.connect(cluster_target) as client:
        topics = [unique("gc") for _ in range(3)]
        for topic in topics:
            await client.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
        packets = [new_packet(topics[i % 3]) for i in range(30)]
        results = await client.dispatch_batch(packets)
        assert all(r.WhichOneof("outcome") == "receipt" for r in results)
        for topic in topics:
            async with client.consume(topic, "g", consumer="c") as consumer:
                async with asyncio.timeout(10):
                    got = [await anext(consumer) for _ in range(10)]
                await consumer.ack(*got)
        report = await client.verify_custody(packets[0].tracking_id)
        assert report.verified
        assert [e.action for e in report.entries] == [
            "received",
            "dispatched",
            "delivered",
            "acked",
        ]

        queue = client.task_queue(unique("cq"))
        await queue.post(packetbus.Task(id="t", priority=1), origin="planner")
        claimed = await queue.claim("w")
        assert claimed is not None
        await claimed.complete({"ok": True})
        assert (await queue.get("t")).status == 3  # TASK_STATUS_COMPLETED

        task = unique("ct")
        for i, refutes in enumerate((False, True)):
            finding = packetbus.Finding(
                task_id=task, id=f"f{i}", claim="x holds", confidence=0.9, refutes=refutes
            )
            posted = await client.post_finding(finding, origin="a")
        assert len(posted.conflicts) == 1


async def test_example_swarm_on_a_cluster(cluster_target: str) -> None:
    """Agents, context, the global map, traces, records, tasks and findings, all at once."""
    env = {**os.environ, "PACKETBUS_TARGET": cluster_target}
    ran = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(REPO / "examples/swarm/coordinator.py"), "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    report = json.loads(ran.stdout)
    assert (report["ok"], report["tasks"], report["chains_verified"]) == (True, 12, 26)


async def test_context_agents_and_policy_on_a_cluster(cluster_url: str, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(
        '[[rules]]\nid = "hold-spawns"\ndecision = "hold"\nreason = "needs a guardian"\n'
        'fields = { primitive = "logistics.spawn" }\n'
        '[[rules]]\nid = "no-drones"\ndecision = "reject"\nreason = "no drones"\n'
        'fields = { vertical = "drones" }\n'
    )
    srv = await start(ServerConfig(listen="127.0.0.1:0", redis_url=cluster_url, policy_file=policy))
    try:
        async with await packetbus.Client.connect(f"127.0.0.1:{srv.port}") as client:
            # A document several chunks long, byte-exact; a stale compare-and-set is ABORTED.
            scope, data = unique("scope"), bytes(range(256)) * 12_288  # 3 MiB
            first = await client.put_context(scope, "doc", data, author="a", expected_version=0)
            assert first.version == 1
            assert (await client.get_context(scope, "doc")).data == data
            with pytest.raises(packetbus.PacketbusError) as stale:
                await client.put_context(scope, "doc", b"x", author="a", expected_version=0)
            assert stale.value.code == grpc.StatusCode.ABORTED

            agent = unique("agent")
            await client.register_agent(agent, role="worker", capabilities=["web"])
            live = await client.list_agents(capability="web", liveness="live")
            assert agent in [a.id for a in live]
            assert await client.deregister_agent(agent) == [agent]

            topic = unique("gov")
            held, rejected, allowed = (new_packet(topic) for _ in range(3))
            held.data.update({"primitive": "logistics.spawn"})
            rejected.data.update({"vertical": "drones"})
            results = await client.dispatch_batch([held, rejected, allowed])
            assert [r.WhichOneof("outcome") for r in results] == ["held", "error", "receipt"]
            assert results[1].error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
            guardian = packetbus.AgentIdentity.generate(unique("guardian"))
            await client.register_identity(guardian)
            receipt = await client.approve_packet(topic, held.tracking_id, identity=guardian)
            assert receipt.topic == topic
            verdict = await client.verify_custody(held.tracking_id)
            assert verdict.verified
            assert "approved" in [e.action for e in verdict.entries]
            [entry] = [e async for e in client.carcel_entries(topic)]
            assert (entry.rule_id, entry.packet.packet.tracking_id) == (
                "no-drones",
                rejected.tracking_id,
            )
    finally:
        await srv.stop(grace=0)


async def test_health_says_not_serving_while_a_primary_is_down(tmp_path: Path) -> None:
    """Health pings every primary: with one down (its slots unserved, and the whole
    cluster refusing writes once it is marked failed), a server is NOT_SERVING, not
    SERVING because the one node it pinged answers; SERVING again once it is back."""
    url, nodes = start_cluster(tmp_path / "down")
    srv = await start(
        ServerConfig(listen="127.0.0.1:0", redis_url=url, health_interval_seconds=0.2)
    )
    try:
        async with await packetbus.Client.connect(f"127.0.0.1:{srv.port}", timeout=5) as client:
            assert await client.health() == "SERVING"
            nodes[2].stop()  # not the node of the URL
            assert await _health_becomes(client, "NOT_SERVING")
            nodes[2].start()
            assert await _health_becomes(client, "SERVING", timeout=20)
    finally:
        await srv.stop(grace=0)
        stop_cluster(nodes)  # the nodes that run: a failure may have left one down


async def _health_becomes(client: packetbus.Client, status: str, timeout: float = 5) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while await client.health() != status:
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True
