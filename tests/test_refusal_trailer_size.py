"""An INVALID_ARGUMENT reaches the client as INVALID_ARGUMENT with its BadRequest,
however many fields are wrong or however long a wrong map key is: the violations
travel in a trailer, and a gRPC client refuses trailers past its metadata limit
(8 KiB soft, 16 KiB hard by default), so an unbounded list arrived as
RESOURCE_EXHAUSTED "received metadata size exceeds hard limit", no field named."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

import packetbus
from packetbus.v1 import agent_service_pb2 as apb
from packetbus.v1 import agent_service_pb2_grpc, carcel_service_pb2_grpc
from packetbus.v1 import carcel_service_pb2 as kpb
from packetbus_server._status import bad_request
from packetbus_server._validation import Violation
from tests.conftest import unique

# What a client accepts by default (grpc-core's soft limit: past it, some calls fail).
CLIENT_METADATA_BUDGET = 8 * 1024


async def _refusal(call: Callable[[], Awaitable[Any]]) -> packetbus.PacketbusError:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call()
    return packetbus.PacketbusError.from_rpc_error(failed.value)


async def test_64_bad_capabilities_are_invalid_argument_with_the_first_ones_named(
    target: str,
) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        agent = apb.Agent(id=unique("agent"), capabilities=[f"bad cap {i}" for i in range(64)])
        error = await _refusal(lambda: stub.RegisterAgent(apb.RegisterAgentRequest(agent=agent)))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    named = [(v.field, v.reason) for v in error.field_violations]
    assert named[0] == ("agent.capabilities[0]", "CHARSET")
    assert 0 < len(named) < 64
    # The message names the first ones, and counts the rest.
    left = re.search(r"; and (\d+) more$", error.message)
    assert left is not None, error.message
    assert error.message.count("agent.capabilities[") == 64 - int(left[1])


async def test_a_thousand_malformed_purge_ids_are_invalid_argument(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = carcel_service_pb2_grpc.CarcelServiceStub(channel)
        request = kpb.PurgeCarcelEntriesRequest(topic=unique("topic"), ids=["bad"] * 1000)
        error = await _refusal(lambda: stub.PurgeCarcelEntries(request))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.field_violations[0].field == "ids[0]"
    assert {v.reason for v in error.field_violations} == {"CARCEL_ID_FORMAT"}


async def test_a_label_key_of_20000_characters_is_named_in_a_trailer_that_fits(
    target: str,
) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        agent = apb.Agent(id=unique("agent"), labels={"k" * 20_000: "v"})
        error = await _refusal(lambda: stub.RegisterAgent(apb.RegisterAgentRequest(agent=agent)))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    [violation] = error.field_violations
    assert violation.field.startswith("agent.labels['kkkk")
    assert violation.reason == "LENGTH"


@pytest.mark.parametrize(
    "violations",
    [
        [
            Violation(f"ids[{i}]", "CARCEL_ID_FORMAT", "must be a carcel entry id")
            for i in range(10_000)
        ],
        [Violation("x" * 100_000, "LENGTH", "y" * 100_000)],
        [Violation(f"labels['{'é' * 300}']", "CHARSET", "ü" * 300) for _ in range(100)],
        [Violation("€" * 5000, "LENGTH", "€" * 5000)] * 100,
    ],
)
def test_every_bad_request_fits_a_clients_metadata_limit(violations: list[Violation]) -> None:
    status = bad_request("invalid thing", violations)
    details = status.SerializeToString()
    # As sent: grpc-status-details-bin base64, grpc-message percent-encoded.
    message = status.message.encode()
    escaped = sum(3 if b < 0x20 or b > 0x7E or b == 0x25 else 1 for b in message)
    encoded = (len(details) + 2) // 3 * 4 + escaped
    assert encoded < CLIENT_METADATA_BUDGET - 1024, encoded
    assert status.details
