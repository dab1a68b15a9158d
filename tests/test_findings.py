"""Findings: conflicts between findings of a task, exactly one event per conflict, escalation."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

import packetbus
from packetbus_server._conflicts import Fact, all_conflicts, subject_of
from tests.conftest import unique


def _finding(
    task_id: str, finding_id: str, claim: str, confidence: float, **kw: object
) -> packetbus.Finding:
    return packetbus.Finding(
        task_id=task_id,
        id=finding_id,
        claim=claim,
        confidence=confidence,
        **kw,  # type: ignore[arg-type]
    )


def test_the_conflict_rule() -> None:
    def fact(i: str, subject: str, confidence: float, refutes: bool = False) -> Fact:
        return Fact(i, "fp", refutes, confidence, subject)

    facts = [
        fact("a", "s", 0.9),
        fact("b", "s", 0.7),  # within 0.3 of a
        fact("c", "s", 0.5, refutes=True),  # opposite of a and b
        fact("d", "other", 0.1),  # another subject: no conflict
        fact("e", "s", 0.35),  # 0.55 from a, 0.35 from b; refutes differs from c
    ]
    found = [(c.first.finding_id, c.second.finding_id, c.reason) for c in all_conflicts(facts, 0.3)]
    assert found == [
        ("a", "c", "opposite claims"),
        ("b", "c", "opposite claims"),
        ("a", "e", "confidences 0.90 and 0.35 differ by more than 0.30"),
        ("b", "e", "confidences 0.70 and 0.35 differ by more than 0.30"),
        ("c", "e", "opposite claims"),
    ]
    assert subject_of("  Q3 revenue   FOLLOWS policy ", "") == "q3 revenue follows policy"
    assert subject_of("anything", "explicit-key") == "explicit-key"
    assert Fact.parse("x", fact("x", "a subject with spaces", 0.25, True).line()) == Fact(
        "x", "fp", True, 0.25, "a subject with spaces"
    )


async def _conflicts_cursor(client: packetbus.Client) -> str:
    """A cursor of the shared conflicts topic from now on: a marker packet's. Reading
    the topic from its start instead would read every earlier run's events."""
    marker = packetbus.Packet(
        topic="findings.conflicts",
        origin="tester-1",
        speech_act=packetbus.SpeechAct.Value("SPEECH_ACT_INFORM"),
    )
    marker.data.update({"task_id": unique("marker")})
    return (await client.dispatch(marker)).cursor


async def _events_of(client: packetbus.Client, task: str, after: str) -> list[Any]:
    """The conflict events about `task` on the conflicts topic after cursor `after`,
    read until it goes quiet."""
    events = []

    async def read() -> None:
        async with client.subscribe("findings.conflicts", after=after) as topic:
            async for stored in topic:
                if stored.packet.data["task_id"] == task:
                    events.append(stored.packet.data)

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(read(), 2)
    return events


async def test_two_contradicting_findings_publish_exactly_one_conflict_event_and_escalate(
    client: packetbus.Client,
) -> None:
    task = unique("task")
    since = await _conflicts_cursor(client)
    first = await client.post_finding(
        _finding(task, "f-1", "Q3 revenue follows the policy change", 0.9), origin="haiku-1"
    )
    assert (first.created, list(first.conflicts)) == (True, [])
    contra = packetbus.Packet(
        origin="haiku-2",
        topic="findings",
        speech_act=packetbus.SpeechAct.Value("SPEECH_ACT_DISCONFIRM"),
        finding=_finding(task, "f-2", "q3 revenue  follows the policy change", 0.8, refutes=True),
    )
    second = await client.post_finding(contra)
    assert [(c.first_finding_id, c.second_finding_id, c.reason) for c in second.conflicts] == [
        ("f-1", "f-2", "opposite claims")
    ]
    # A retry of the same post: the same answer, no second event.
    again = await client.post_finding(contra)
    assert again.created is False
    assert len(again.conflicts) == 1
    # A finding that agrees closely enough conflicts only with the refutation.
    await client.post_finding(
        _finding(task, "f-3", "Q3 revenue follows the policy change", 0.75), origin="haiku-3"
    )
    events = await _events_of(client, task, since)
    assert [(e["first_finding_id"], e["second_finding_id"]) for e in events] == [
        ("f-1", "f-2"),
        ("f-2", "f-3"),
    ]

    on_demand = await client.detect_conflicts(task, threshold=0.1)
    assert [(c.first_finding_id, c.second_finding_id) for c in on_demand] == [
        ("f-1", "f-2"),
        ("f-1", "f-3"),
        ("f-2", "f-3"),
    ]
    assert [f.packet.finding.id for f in await client.list_findings(task)] == ["f-1", "f-2", "f-3"]
    got = await client.get_finding(task, "f-2")
    assert got.packet.finding.refutes is True

    escalation = await client.escalate(
        task, ["f-1", "f-2"], reason="haiku-1 and haiku-2 disagree", origin="haiku-3"
    )
    assert escalation.packet.speech_act == packetbus.SpeechAct.Value("SPEECH_ACT_ESCALATE")
    listed = await client.list_escalations(task)
    assert [e.packet.tracking_id for e in listed] == [escalation.packet.tracking_id]
    data = json_format.MessageToDict(listed[0].packet.data)
    assert [f["finding"]["id"] for f in data["findings"]] == ["f-1", "f-2"]
    assert listed[0].packet.data["reason"] == "haiku-1 and haiku-2 disagree"
    report = await client.verify_custody(escalation.packet.tracking_id)
    assert report.verified


async def test_bad_findings_and_escalations_are_refused(client: packetbus.Client) -> None:
    with pytest.raises(packetbus.PacketbusError) as bad:
        await client.post_finding(_finding("", "x", "", 1.5), origin="a b")
    assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in bad.value.field_violations} == {
        "packet.finding.task_id",
        "packet.finding.claim",
        "packet.finding.confidence",
        "packet.origin",
    }
    task = unique("task")
    await client.post_finding(_finding(task, "f", "c", 0.5), origin="a")
    with pytest.raises(packetbus.PacketbusError) as taken:
        await client.post_finding(_finding(task, "f", "another claim", 0.5), origin="a")
    assert taken.value.code == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(packetbus.PacketbusError) as missing:
        await client.escalate(task, ["f", "nope"], reason="r", origin="a")
    assert missing.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(packetbus.PacketbusError) as unknown:
        await client.get_finding(task, "nope")
    assert unknown.value.code == grpc.StatusCode.NOT_FOUND
