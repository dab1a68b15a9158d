"""A claim names at most as many capabilities as an agent may register
(Limits.max_agent_capabilities, 64): the claim script looks in one ready set per
capability, so a claim of a million (a 16 MiB request) held the store for
seconds, every other client waiting and health NOT_SERVING meanwhile."""

from __future__ import annotations

import grpc
import pytest

import packetbus
from packetbus.v1 import task_service_pb2 as pb
from packetbus_server import Limits
from tests.conftest import unique

MAX = Limits().max_agent_capabilities


async def test_a_claim_of_more_capabilities_than_an_agent_may_have_is_refused(
    client: packetbus.Client,
) -> None:
    queue = client.task_queue(unique("queue"))
    needed = f"cap-{MAX}"  # the one past the limit
    await queue.post(packetbus.Task(id="t-1", required_capability=needed), origin="planner")
    capabilities = [f"cap-{i}" for i in range(MAX + 1)]
    with pytest.raises(packetbus.PacketbusError) as refused:
        await queue.claim("worker-1", capabilities=capabilities)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.reason) for v in refused.value.field_violations] == [
        ("capabilities", "COUNT")
    ]
    state = await queue.get("t-1")
    assert (state.status, state.claims) == (pb.TASK_STATUS_QUEUED, 0)

    # As many as an agent may have: claimed.
    claimed = await queue.claim("worker-1", capabilities=capabilities[1:])
    assert claimed is not None
    assert claimed.task_id == "t-1"
