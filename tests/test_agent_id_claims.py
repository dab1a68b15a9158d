"""An agent id the policy gives to a principal is that principal's alone (issue 14,
item 4: "an inbox is read only by its agent"; "a packet's origin must be the
calling principal's agent id").

The policy maps the real coordinator (``.../agent/coordinator-main``) to agent id
``coordinator``. Another principal whose default agent id would be ``coordinator``
too (a SPIFFE ID ending in ``/coordinator`` in another namespace, as Istio's
``ns/<namespace>/sa/<service account>`` IDs are when a tenant names a service
account so) gets the worker role from a broad glob, and before this rule was the
coordinator for every binding: it read the coordinator's inbox and sent as it.
Now it has no agent id: PERMISSION_DENIED (agents.act_for on ``coordinator``),
nothing written; the mapped coordinator still reads its inbox.

Real server on loopback, real store, real Ed25519 JWTs (tests/_binding.py).
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis_asyncio

import packetbus
from packetbus.v1 import consumer_group_service_pb2 as groups_pb
from packetbus.v1 import packet_service_pb2
from packetbus_server import RunningServer
from tests._binding import Caller, denied, first_response, packet_as, refused, serve_bound
from tests._principals import error_info
from tests._store_keys import key_names, new_keys
from tests.conftest import run_cli, unique

# Identity, not storage: one backend (see conftest).
pytestmark = pytest.mark.one_backend

COORDINATOR = "spiffe://example.org/agent/coordinator-main"
IMPOSTOR = "spiffe://example.org/ns/team-b/sa/coordinator"
WORKER = "spiffe://example.org/ns/team-b/sa/worker-7"

POLICY = """
[authorization]

[[authorization.principals]]
match = "spiffe://example.org/agent/coordinator-main"
roles = ["agent"]
agent_id = "coordinator"

[[authorization.principals]]
match = "spiffe://example.org/ns/*"
roles = ["agent"]

[authorization.roles.agent]
grants = [
  { permissions = ["topics.*", "groups.*"], resources = ["inbox/*", "jobs.*"] },
  { permissions = ["memory.*"], resources = ["{agent}"] },
]
"""


@pytest.fixture
async def bound(redis_url: str, tmp_path: Path) -> AsyncIterator[tuple[RunningServer, Any]]:
    srv, issuer = await serve_bound(redis_url, tmp_path, POLICY)
    yield srv, issuer
    await srv.stop(grace=0)


async def test_a_default_agent_id_the_policy_gives_another_is_no_agent_id(
    bound: tuple[RunningServer, Any], raw_redis: redis_asyncio.Redis
) -> None:
    srv, issuer = bound
    inbox = packetbus.inbox_topic("coordinator")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        coordinator = Caller(channel, issuer, COORDINATOR)
        impostor = Caller(channel, issuer, IMPOSTOR)
        worker = Caller(channel, issuer, WORKER)
        letter = packet_as(inbox, "worker-7")
        [sent] = await worker.dispatch(letter)  # anyone may send to an inbox
        assert sent.HasField("receipt")

        before = await key_names(raw_redis)
        subscribe = packet_service_pb2.SubscribeRequest(
            topic=inbox, start_position=packet_service_pb2.START_POSITION_EARLIEST
        )
        code, info, _ = await refused(
            first_response(impostor.packets.Subscribe(subscribe, metadata=impostor.metadata))
        )
        assert (code, info) == (
            grpc.StatusCode.PERMISSION_DENIED,
            denied(IMPOSTOR, "agents.act_for", "coordinator"),
        )
        group = groups_pb.CreateConsumerGroupRequest(topic=inbox, name=unique("steal"))
        code, info, _ = await refused(
            impostor.groups.CreateConsumerGroup(group, metadata=impostor.metadata)
        )
        assert (code, info) == (
            grpc.StatusCode.PERMISSION_DENIED,
            denied(IMPOSTOR, "agents.act_for", "coordinator"),
        )
        forged = packet_as(unique("jobs.orders"), "coordinator")
        [result] = await impostor.dispatch(forged)
        assert result.error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
        assert error_info(result.error) == denied(IMPOSTOR, "agents.act_for", "coordinator")
        assert await new_keys(raw_redis, before) == set()

        # The mapped coordinator is the coordinator; a worker is still its own agent.
        got = await first_response(
            coordinator.packets.Subscribe(subscribe, metadata=coordinator.metadata)
        )
        assert letter.tracking_id in [p.packet.tracking_id for p in got.packets]
        [mine] = await worker.dispatch(packet_as(unique("jobs.orders"), "worker-7"))
        assert mine.HasField("receipt")


def test_policy_can_shows_the_impostor_without_an_agent_id(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    done: subprocess.CompletedProcess[str] = run_cli(
        "policy", "can", str(policy), "--principal", IMPOSTOR, "memory.write", "coordinator"
    )
    assert done.returncode == 1, done.stderr
    assert f"principal {IMPOSTOR!r} (agent id '', roles ['agent'])" in done.stdout
    done = run_cli(
        "policy", "can", str(policy), "--principal", COORDINATOR, "memory.write", "coordinator"
    )
    assert done.returncode == 0, done.stderr
