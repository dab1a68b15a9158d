"""What the identity tests share: reading a refusal's ErrorInfo, seeing which
principal a server authenticated, and raw calls with chosen metadata."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from packetbus.rich_status import status_in
from packetbus.v1 import (
    packet_service_pb2,
    packet_service_pb2_grpc,
    policy_service_pb2,
    policy_service_pb2_grpc,
)
from packetbus_server._access import Permission, Principal
from tests.conftest import new_packet

Metadata = tuple[tuple[str, str], ...]


def error_info(error: grpc.aio.AioRpcError) -> tuple[str, dict[str, str]]:
    """The ErrorInfo (reason, metadata) in a failed call's status details."""
    status = status_in(error.trailing_metadata())
    assert status is not None, f"no status details in {error!r}"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.domain == "packetbus"
    return info.reason, dict(info.metadata)


class PolicyReadRefused:
    """An Authorizer (see _access.gate) that grants everything but policy.read, so
    GetPolicy's PERMISSION_DENIED names the principal the server authenticated
    (its ErrorInfo metadata `principal`) while every other call goes through."""

    enabled = True

    def allows(self, principal: Principal, permission: Permission, resource: str) -> bool:
        return permission is not Permission.POLICY_READ

    def agent_id(self, name: str) -> str | None:
        return None


async def authenticated_as(channel: grpc.aio.Channel, metadata: Metadata) -> str:
    """The principal name a server with `PolicyReadRefused` gives a call carrying
    `metadata` (AssertionError when the call is refused otherwise)."""
    stub = policy_service_pb2_grpc.PolicyServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.GetPolicy(policy_service_pb2.GetPolicyRequest(), metadata=metadata)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, refused.value.details()
    reason, details = error_info(refused.value)
    assert reason == "PERMISSION_DENIED"
    return details["principal"]


async def server_info(channel: grpc.aio.Channel, metadata: Metadata) -> None:
    """GetServerInfo (any authenticated caller may) with `metadata`."""
    stub = packet_service_pb2_grpc.PacketServiceStub(channel)
    await stub.GetServerInfo(packet_service_pb2.GetServerInfoRequest(), metadata=metadata)


async def dispatch(channel: grpc.aio.Channel, topic: str, metadata: Metadata) -> None:
    """Dispatch one packet to `topic` with `metadata`; raises when it is not stored."""
    stub = packet_service_pb2_grpc.PacketServiceStub(channel)
    reply = await stub.Dispatch(
        packet_service_pb2.DispatchRequest(packets=[new_packet(topic)]), metadata=metadata
    )
    assert [result.WhichOneof("outcome") for result in reply.results] == ["receipt"], reply
