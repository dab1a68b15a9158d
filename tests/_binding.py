"""A server where identity binds packets, and callers of it (issue 14, items 3, 4).

The server runs on loopback over the session's store; callers prove who they are
with bearer JWTs (Ed25519, tests/_principals.py) and are authorized by the policy
file's `[authorization]` section (`POLICY`). Shared by test_identity_binding and
test_inbox_binding.
"""

from __future__ import annotations

from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis_asyncio

import packetbus
from packetbus.v1 import (
    consumer_group_service_pb2_grpc,
    context_service_pb2_grpc,
    custody_service_pb2_grpc,
    finding_service_pb2_grpc,
    packet_service_pb2,
    packet_service_pb2_grpc,
    record_service_pb2_grpc,
    task_service_pb2_grpc,
)
from packetbus_server import Limits, RunningServer, ServerConfig, _keys, start
from tests._principals import AUDIENCE, ISSUER, TokenIssuer, call_error_info
from tests.conftest import new_packet

PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED.value[0]

COORDINATOR = "spiffe://example.org/agent/coordinator"
WORKER_1 = "spiffe://example.org/agent/worker-1"
WORKER_2 = "spiffe://example.org/agent/worker-2"
PLANNER = "spiffe://example.org/agent/planner"

# Who may do what (the policy file's [authorization] section); and governance,
# which runs after authorization: a packet refused at the door must leave no
# carcel entry and no decision counted, where an allowed one on the same kind of
# topic is carceled.
POLICY = """
default = "allow"

[[rules]]
id = "no-gov"
decision = "reject"
reason = "gov topics are closed"
topic = "jobs.gov.*"

[authorization]

[[authorization.principals]]
match = "spiffe://example.org/agent/coordinator"
roles = ["coordinator"]

[[authorization.principals]]
match = ["spiffe://example.org/agent/worker-*", "spiffe://example.org/agent/planner"]
roles = ["worker"]

[authorization.roles.coordinator]
grants = [
  { permissions = ["topics.publish", "tasks.post"], resources = ["jobs.*"] },
  { permissions = ["agents.act_for"], resources = ["worker-*"] },
  { permissions = ["topics.subscribe", "topics.consume", "groups.*"], resources = ["inbox/*"] },
]

[authorization.roles.worker]
grants = [
  { permissions = ["topics.*", "groups.*"], resources = ["jobs.*", "inbox/*"] },
  { permissions = ["tasks.*", "findings.*", "traces.*", "memory.*"], resources = ["*"] },
  { permissions = ["records.*"], resources = ["session_summary"] },
  { permissions = ["context.*"], resources = ["team"] },
  { permissions = ["audit.export"], resources = ["jobs.*"] },
]
"""


async def serve_bound(
    redis_url: str, directory: Path, policy: str
) -> tuple[RunningServer, TokenIssuer]:
    issuer = TokenIssuer(directory)
    policy_file = directory / "policy.toml"
    policy_file.write_text(policy)
    config = ServerConfig(
        listen="127.0.0.1:0",
        redis_url=redis_url,
        limits=Limits(min_ack_deadline_seconds=1),
        policy_file=policy_file,
        jwt_public_key_files=(issuer.public_key_file,),
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
    )
    return await start(config), issuer


class Caller:
    """Stubs of every service, each call made as one principal."""

    def __init__(self, channel: grpc.aio.Channel, issuer: TokenIssuer, name: str) -> None:
        self.name = name
        self.metadata = issuer.metadata(name)
        self.packets = packet_service_pb2_grpc.PacketServiceStub(channel)
        self.groups = consumer_group_service_pb2_grpc.ConsumerGroupServiceStub(channel)
        self.tasks = task_service_pb2_grpc.TaskServiceStub(channel)
        self.findings = finding_service_pb2_grpc.FindingServiceStub(channel)
        self.records = record_service_pb2_grpc.RecordServiceStub(channel)
        self.context = context_service_pb2_grpc.ContextServiceStub(channel)
        self.custody = custody_service_pb2_grpc.CustodyServiceStub(channel)

    async def dispatch(self, *packets: packetbus.Packet) -> list[Any]:
        response = await self.packets.Dispatch(
            packet_service_pb2.DispatchRequest(packets=packets), metadata=self.metadata
        )
        return list(response.results)


def packet_as(topic: str, origin: str, **fields: object) -> packetbus.Packet:
    packet = new_packet(topic, **fields)
    packet.origin = origin
    return packet


async def refused(call: Awaitable[Any]) -> tuple[grpc.StatusCode, dict[str, str], str]:
    """The code, ErrorInfo and message a call failed with (it must fail)."""
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call
    return failed.value.code(), call_error_info(failed.value), failed.value.details() or ""


def denied(principal: str, permission: str, resource: str) -> dict[str, str]:
    return {
        "reason": "PERMISSION_DENIED",
        "permission": permission,
        "resource": resource,
        "principal": principal,
    }


async def stored_nowhere(r: redis_asyncio.Redis, topic: str, tracking_id: str) -> bool:
    """Nothing of a packet is in the store: no record, no dedupe location, no log, no
    carcel entry or decision counted, its topic not listed."""
    keys = [
        _keys.packet_record(topic, tracking_id),
        _keys.packet_location(tracking_id),
        _keys.topic_log(topic),
        _keys.carcel(topic),
        _keys.policy_stats(topic),
        _keys.policy_decisions(topic),
        _keys.held(topic),
    ]
    for key in keys:
        if await r.exists(key):
            return False
    return await r.zscore(_keys.TOPICS, topic) is None


async def first_response(call: Any) -> Any:
    """The first response of a streaming call (an error raises)."""
    async for response in call:
        return response
    return None
