"""The policy language on its own: parsing, validation errors and rule matching."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import pytest

from packetbus.v1 import contents_pb2, packet_pb2, speech_act_pb2
from packetbus_server._policy import Decision, PolicyError, Verdict
from packetbus_server._policy_parse import parse
from packetbus_server._policy_watch import PolicyWatch


def packet(
    *,
    topic: str = "ops.drones",
    origin: str = "planner-1",
    act: str = "SPEECH_ACT_REQUEST",
    data: dict[str, Any] | None = None,
) -> packet_pb2.Packet:
    p = packet_pb2.Packet(
        topic=topic, origin=origin, speech_act=speech_act_pb2.SpeechAct.Value(act)
    )
    if data is not None:
        p.data.update(data)
    return p


def rules(*bodies: str, head: str = "") -> bytes:
    return (head + "".join(f"\n[[rules]]\n{b}\n" for b in bodies)).encode()


def test_the_first_matching_rule_decides_and_no_match_is_allowed() -> None:
    policy = parse(
        rules(
            'id = "ok-lab"\ndecision = "allow"\nfields = { vertical = "lab" }',
            'id = "r"\ndecision = "reject"\nreason = "no"\ntopic = "ops.*"',
            'id = "h"\ndecision = "hold"\nreason = "wait"',
        )
    )
    assert policy.evaluate(packet(data={"vertical": "lab"})) is None
    assert policy.evaluate(packet()) == Decision(Verdict.REJECT, "r", "no")
    assert policy.evaluate(packet(topic="chat")) == Decision(Verdict.HOLD, "h", "wait")


def test_the_default_decides_when_no_rule_matches() -> None:
    policy = parse(
        rules('id = "a"\ndecision = "allow"\norigin = "trusted-*"', head='default = "hold"')
    )
    assert policy.evaluate(packet(origin="trusted-7")) is None
    decision = policy.evaluate(packet(origin="stranger"))
    assert decision is not None
    assert (decision.verdict, decision.rule_id) == (Verdict.HOLD, "default")


def test_the_version_is_the_files_sha256() -> None:
    data = rules('id = "a"\ndecision = "allow"')
    assert parse(data).version == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("condition", "data", "matches"),
    [
        ("entropy = { gt = 0.7 }", {"entropy": 0.9}, True),
        ("entropy = { gt = 0.7 }", {"entropy": 0.7}, False),
        ("entropy = { ge = 0.7 }", {"entropy": 0.7}, True),
        ("entropy = { lt = 0.2, ge = 0.1 }", {"entropy": 0.15}, True),
        ("entropy = { le = 0.2 }", {"entropy": "0.1"}, False),  # a string is not a number
        ("entropy = 1", {"entropy": 1.0}, True),
        ('vertical = "drones"', {"vertical": "drones"}, True),
        ('vertical = "drones"', {"vertical": "lab"}, False),
        ('vertical = { in = ["drones", "robotics"] }', {"vertical": "robotics"}, True),
        ('vertical = { not_in = ["drones"] }', {"vertical": "lab"}, True),
        ('vertical = { ne = "lab" }', {"vertical": "lab"}, False),
        ('primitive = { glob = "logistics.*" }', {"primitive": "logistics.spawn"}, True),
        ('primitive = { glob = "logistics.*" }', {"primitive": "matrix.route"}, False),
        ("actor = { exists = true }", {"actor": "x"}, True),
        ("actor = { exists = false }", {}, True),
        ("actor = { exists = false }", {"actor": "x"}, False),
        ('actor = "x"', {}, False),  # missing fields match nothing but exists = false
        ('"plan.step" = 2', {"plan": {"step": 2}}, True),
        ('"plan.step" = 2', {"plan": "flat"}, False),
        ("urgent = true", {"urgent": True}, True),
        ("urgent = true", {"urgent": 1}, False),  # booleans equal booleans only
    ],
)
def test_field_conditions(condition: str, data: dict[str, Any], matches: bool) -> None:
    policy = parse(
        rules(f'id = "r"\ndecision = "reject"\nreason = "x"\n[rules.fields]\n{condition}')
    )
    assert (policy.evaluate(packet(data=data)) is not None) is matches


def test_typed_contents_fields_and_content_types() -> None:
    policy = parse(
        rules(
            'id = "t"\ndecision = "hold"\nreason = "x"\ncontent_type = "task"\n'
            'fields = { "payload.entropy" = { gt = 0.5 }, "labels.team" = "red", priority = { ge = 3 } }',
            'id = "j"\ndecision = "reject"\nreason = "y"\ncontent_type = "application/json*"',
            'id = "n"\ndecision = "reject"\nreason = "z"\ncontent_type = "none"',
        )
    )
    task = packet_pb2.Packet(task=contents_pb2.Task(priority=5, labels={"team": "red"}))
    task.task.payload.update({"entropy": 0.6})
    assert policy.evaluate(task) == Decision(Verdict.HOLD, "t", "x")
    task.task.priority = 1
    assert policy.evaluate(task) is None
    assert policy.evaluate(packet_pb2.Packet()) == Decision(Verdict.REJECT, "n", "z")
    raw = packet_pb2.Packet(raw=contents_pb2.RawContents(content_type="application/json; x=1"))
    assert policy.evaluate(raw) == Decision(Verdict.REJECT, "j", "y")
    raw.raw.content_type = "text/plain"
    assert policy.evaluate(raw) is None


def test_speech_acts_origins_and_topics() -> None:
    policy = parse(
        rules(
            'id = "r"\ndecision = "reject"\nreason = "x"\nspeech_act = ["request", "query-if"]\n'
            'origin = ["haiku-*", "ops-bot"]\ntopic = "ops.*"'
        )
    )
    assert policy.evaluate(packet(origin="haiku-3")) is not None
    assert policy.evaluate(packet(origin="ops-bot", act="SPEECH_ACT_QUERY_IF")) is not None
    assert policy.evaluate(packet(origin="ops-bot", act="SPEECH_ACT_INFORM")) is None
    assert policy.evaluate(packet(origin="sonnet-1")) is None
    assert policy.evaluate(packet(origin="haiku-3", topic="chat")) is None


def test_approvers() -> None:
    policy = parse(b'[approval]\napprovers = ["guardian-*", "ops"]\n')
    assert policy.may_approve("guardian-2")
    assert policy.may_approve("ops")
    assert not policy.may_approve("planner")
    assert parse(b"").may_approve("anyone")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("default = ", "not valid TOML"),
        ('colour = "red"', "unknown top-level key(s) ['colour']"),
        ('default = "maybe"', "default: decision must be one of allow, reject, hold"),
        ('rules = "x"', "rules must be an array of tables"),
        ('[[rules]]\ndecision = "allow"', "rules[0]: id is required"),
        ('[[rules]]\nid = "bad id"\ndecision = "allow"', "rules[0]: id is required"),
        ('[[rules]]\nid = "a"', "rules[0] (id 'a'): decision is required"),
        (
            '[[rules]]\nid = "a"\ndecision = "reject"',
            "rules[0] (id 'a'): a reject rule needs a reason",
        ),
        ('[[rules]]\nid = "a"\ndecision = "allow"\ncolour = 1', "unknown key(s) ['colour']"),
        (
            '[[rules]]\nid = "a"\ndecision = "allow"\n[[rules]]\nid = "a"\ndecision = "allow"',
            "rules[1]: id 'a' is used by an earlier rule",
        ),
        (
            '[[rules]]\nid = "a"\ndecision = "allow"\nspeech_act = "SHOUT"',
            "'SHOUT' is not a speech act",
        ),
        ('[[rules]]\nid = "a"\ndecision = "allow"\ncontent_type = "video"', "content_type 'video'"),
        (
            '[[rules]]\nid = "a"\ndecision = "allow"\ntopic = []',
            "topic: must be a non-empty string",
        ),
        (
            '[[rules]]\nid = "a"\ndecision = "allow"\nfields = { x = { gt = "1" } }',
            "gt takes a number",
        ),
        (
            '[[rules]]\nid = "a"\ndecision = "allow"\nfields = { x = { near = 1 } }',
            "unknown operator 'near'",
        ),
        (
            '[[rules]]\nid = "a"\ndecision = "allow"\nfields = { x = [1, 2] }',
            "write { in = [...] }",
        ),
        (
            '[[rules]]\nid = "a"\ndecision = "allow"\nfields = { x = { in = [] } }',
            "in takes a non-empty list",
        ),
        ('[[rules]]\nid = "a"\ndecision = "allow"\nfields = { "a..b" = 1 }', "empty segment"),
        (
            '[[rules]]\nid = "a"\ndecision = "allow"\nfields = { x = { exists = false, eq = 1 } }',
            "cannot be combined",
        ),
        ("[approval]\napprovers = [1]", "approval.approvers: must be a non-empty string"),
    ],
)
def test_invalid_files_are_refused_naming_the_rule(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse(text.encode())
    assert message in str(caught.value)


def test_toml_errors_name_the_line() -> None:
    with pytest.raises(PolicyError, match=r"line 3"):
        parse(b'default = "allow"\n\n[[rules]\n')


def test_twenty_rules_that_do_not_match_decide_nothing() -> None:
    policy = parse(
        rules(
            *(
                f'id = "r{i}"\ndecision = "reject"\nreason = "x"\ntopic = "t{i}.*"\n'
                f"fields = {{ entropy = {{ gt = 0.7 }} }}"
                for i in range(20)
            )
        )
    )
    # Its cost is for a benchmark to measure (a wall-clock bound here failed on a loaded
    # CI machine at 112 us); what a test can hold is the answer: 20 rules whose topic
    # does not match reject nothing, whatever the fields say, and a matching one does.
    assert policy.evaluate(packet(topic="other", data={"entropy": 0.9})) is None
    matched = policy.evaluate(packet(topic="t7.x", data={"entropy": 0.9}))
    assert matched is not None
    assert (matched.verdict, matched.rule_id) == (Verdict.REJECT, "r7")
    assert policy.evaluate(packet(topic="t7.x", data={"entropy": 0.5})) is None


def test_the_watch_reloads_changes_and_keeps_the_old_policy_on_errors(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    first = rules('id = "a"\ndecision = "reject"\nreason = "x"')
    path.write_bytes(first)
    watch = PolicyWatch.load(path, interval=60)
    assert watch.policy is not None
    assert watch.policy.version == hashlib.sha256(first).hexdigest()
    assert not watch.check()  # unchanged

    path.write_bytes(b'default = "sometimes"\n')
    assert not watch.check()
    assert watch.failure is not None
    assert "default: decision must be one of" in watch.failure.message
    assert watch.policy.version == hashlib.sha256(first).hexdigest()  # still in force

    second = rules('id = "b"\ndecision = "hold"\nreason = "y"')
    path.write_bytes(second)
    os.utime(path, ns=(1, 1))  # SIGHUP looks again even when the file looks unchanged
    watch.reload_now()
    assert watch.policy.version == hashlib.sha256(second).hexdigest()
    assert watch.failure is None

    path.unlink()
    assert not watch.check()
    assert watch.failure is not None
    assert watch.policy.version == hashlib.sha256(second).hexdigest()


def test_the_watch_refuses_to_start_on_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_bytes(b"[[rules]]\n")
    with pytest.raises(ValueError, match=r"rules\[0\]: id is required"):
        PolicyWatch.load(path, interval=60)
    assert PolicyWatch.load(None, interval=60).policy is None


def test_the_readme_policy_parses_and_decides() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    match = re.search(r"<!-- readme:policy -->\n```toml\n(.*?)```", readme, re.S)
    assert match
    policy = parse(match.group(1).encode())
    spawn = packet(data={"primitive": "logistics.spawn"})
    assert policy.evaluate(spawn) == Decision(
        Verdict.HOLD, "spawn-needs-guardian", "spawning needs a guardian"
    )
    drones = packet(act="SPEECH_ACT_INFORM", data={"vertical": "drones", "entropy": 0.9})
    assert policy.evaluate(drones) == Decision(
        Verdict.REJECT, "uncertain-drones", "entropy too high for drones"
    )
    assert policy.evaluate(packet(act="SPEECH_ACT_INFORM", data={"entropy": 0.9})) is None
    assert policy.may_approve("guardian-1")
    assert not policy.may_approve("planner-1")
