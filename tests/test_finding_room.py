"""Every finding PostFinding accepts can be escalated alone, with the longest reason
and origin Escalate accepts, and its conflict events published: a finding too close
to the packet limit for that is refused at the door (packet, FINDING_TOO_LARGE),
before anything is stored. Several findings too large together are still the
caller's to split (finding_ids, ESCALATION_TOO_LARGE)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

import packetbus
from packetbus.v1 import finding_service_pb2, finding_service_pb2_grpc
from tests.conftest import new_packet, unique
from tests.test_bad_input import _refused

LIMIT = 1024 * 1024
LONGEST_ORIGIN = "o" * 255
# The longest reason Escalate accepts (README, proto), in UTF-8 bytes.
MAX_ESCALATION_REASON_BYTES = 1024


def _post(
    task: str, finding_id: str, claim: str, *, refutes: bool = False
) -> finding_service_pb2.PostFindingRequest:
    finding = packetbus.Finding(
        task_id=task, id=finding_id, claim=claim, confidence=0.5, refutes=refutes
    )
    packet = new_packet("findings", finding=finding)
    # Sizes must depend on the claim alone: the nanos of the dispatch time take 1 to 5
    # bytes, which would move the boundary the bisection below looks for.
    packet.dispatched_at.nanos = 999_999_999
    return finding_service_pb2.PostFindingRequest(packet=packet)


@pytest.fixture
async def stub(target: str) -> AsyncIterator[finding_service_pb2_grpc.FindingServiceStub]:
    async with grpc.aio.insecure_channel(target) as channel:
        yield finding_service_pb2_grpc.FindingServiceStub(channel)


async def _accepted(
    stub: finding_service_pb2_grpc.FindingServiceStub,
    request: finding_service_pb2.PostFindingRequest,
) -> bool:
    try:
        await stub.PostFinding(request)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
            raise
        return False
    return True


async def test_the_longest_finding_accepted_escalates_alone(
    client: packetbus.Client, stub: finding_service_pb2_grpc.FindingServiceStub
) -> None:
    task = unique("task")
    # The checker's finding, 1,500 bytes under the limit: it used to be stored and
    # then never escalatable.
    assert not await _accepted(stub, _post(task, "n0000000", "c" * (LIMIT - 1500)))
    # The longest claim accepted, found by bisection against the server (finding ids
    # all 8 characters long).
    low, high = LIMIT - 64 * 1024, LIMIT
    assert await _accepted(stub, _post(task, f"f{low:07}", "c" * low))
    while high - low > 1:
        middle = (low + high) // 2
        if await _accepted(stub, _post(task, f"f{middle:07}", "c" * middle)):
            low = middle
        else:
            high = middle
    # One byte more is refused on the packet, for its escalation (not the packet
    # limit itself: the packet is still well under it).
    over = _post(task, f"g{low + 1:07}", "c" * (low + 1))  # ids of one length
    assert over.packet.ByteSize() < LIMIT - MAX_ESCALATION_REASON_BYTES
    assert await _refused(stub.PostFinding(over)) == [("packet", "FINDING_TOO_LARGE")]
    assert [f.packet.finding.id for f in await client.list_findings(task)].count(
        f"g{low + 1:07}"
    ) == 0

    escalated = await client.escalate(
        task, [f"f{low:07}"], reason="r" * MAX_ESCALATION_REASON_BYTES, origin=LONGEST_ORIGIN
    )
    assert escalated.packet.speech_act == packetbus.SpeechAct.Value("SPEECH_ACT_ESCALATE")
    # The bound is tight: the escalation's content nearly fills the packet limit.
    assert LIMIT - 64 < len(escalated.content) < LIMIT + 64


async def test_a_reason_longer_than_the_bound_is_refused(
    client: packetbus.Client, stub: finding_service_pb2_grpc.FindingServiceStub
) -> None:
    task = unique("task")
    await stub.PostFinding(_post(task, "f", "claim"))
    request = finding_service_pb2.EscalateRequest(
        task_id=task, origin="o", reason="r" * (MAX_ESCALATION_REASON_BYTES + 1), finding_ids=["f"]
    )
    assert await _refused(stub.Escalate(request)) == [("reason", "LENGTH")]


async def test_findings_too_large_together_are_the_callers_to_split(
    client: packetbus.Client, stub: finding_service_pb2_grpc.FindingServiceStub
) -> None:
    task = unique("task")
    for name in ("a", "b"):
        await stub.PostFinding(_post(task, name, name * (600 * 1024)))
    request = finding_service_pb2.EscalateRequest(
        task_id=task, origin="o", reason="r", finding_ids=["a", "b"]
    )
    assert await _refused(stub.Escalate(request)) == [("finding_ids", "ESCALATION_TOO_LARGE")]
    for name in ("a", "b"):  # each alone goes
        await client.escalate(task, [name], reason="r", origin="o")


async def test_a_finding_whose_conflict_event_would_pass_the_limit_is_refused(
    client: packetbus.Client, stub: finding_service_pb2_grpc.FindingServiceStub
) -> None:
    task = unique("task")
    # Casefolding "İ" (2 bytes) gives "i̇" (3 bytes): the conflict event's subject is
    # half as large again as the claim, more than the packet limit for this claim.
    claim = "\u0130" * 360_000
    assert await _refused(stub.PostFinding(_post(task, "a", claim))) == [
        ("packet", "FINDING_TOO_LARGE")
    ]
    # Before, the first was stored and the contradicting one was stored too, then
    # failed publishing its event.
    assert await _refused(stub.PostFinding(_post(task, "b", claim, refutes=True))) == [
        ("packet", "FINDING_TOO_LARGE")
    ]
    assert await client.list_findings(task) == []
    # Under the bound the event is published with the finding.
    small = "\u0130" * 300_000
    await stub.PostFinding(_post(task, "c", small))
    second = await stub.PostFinding(_post(task, "d", small, refutes=True))
    assert [(c.first_finding_id, c.second_finding_id) for c in second.conflicts] == [("c", "d")]


@pytest.mark.parametrize("nanos", [0, 1_000, 1_000_000, 123_456_789])
def test_a_findings_room_does_not_depend_on_when_it_was_signed(nanos: int) -> None:
    """As JSON a time takes 0 to 9 fractional digits, and inside a signed record
    1 to 5 bytes: the bound must be taken at the longest, or the same finding is
    accepted or refused by the nanoseconds of its custody hop."""
    from packetbus.v1 import custody_pb2
    from packetbus_server._derived import room_violations

    def payload(at: int) -> bytes:
        packet = _post("task", "f", "claim").packet
        record = custody_pb2.CustodyRecord(sequence=0, actor="server", action="received")
        record.occurred_at.seconds, record.occurred_at.nanos = 1_790_000_000, at
        packet.chain_of_custody.add(record=record.SerializeToString(), key_id="k")
        return packet.SerializeToString()

    def sizes(at: int) -> list[str]:
        return [v.description for v in room_violations("srv", "task", "f", "s", payload(at), 0)]

    assert len(sizes(nanos)) == 2  # both derived packets measured
    assert sizes(nanos) == sizes(999_999_999)
