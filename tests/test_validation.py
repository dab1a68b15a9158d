"""The validation rules as plain unit tests: field paths and rule ids, no server."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from packetbus.v1 import custody_pb2, packet_pb2, speech_act_pb2
from packetbus_server import Limits, _field_rules
from packetbus_server._validation import validate_packet

LIMITS = Limits()


def valid() -> packet_pb2.Packet:
    return packet_pb2.Packet(
        tracking_id="0b9f4c1e-5a4e-4c8e-9d65-0d4f2f6b7a10",
        origin="haiku-1",
        schema_version="1.0",
        speech_act=speech_act_pb2.SPEECH_ACT_INFORM,
        topic="research.q3",
    )


def rules(packet: packet_pb2.Packet) -> list[tuple[str, str]]:
    return [(v.field, v.rule) for v in validate_packet(packet, LIMITS)]


def test_a_minimal_packet_is_valid() -> None:
    assert rules(valid()) == []


def test_every_speech_act_but_unspecified_is_accepted() -> None:
    names = speech_act_pb2.SpeechAct.keys()
    assert len(names) == 25  # 22 FIPA performatives + ESCALATE + HOLD + UNSPECIFIED
    for name in names:
        p = valid()
        p.speech_act = speech_act_pb2.SpeechAct.Value(name)
        expected = [("speech_act", "REQUIRED")] if name == "SPEECH_ACT_UNSPECIFIED" else []
        assert rules(p) == expected, name
    p = valid()
    p.speech_act = 99  # type: ignore[assignment]  # an open enum keeps unknown numbers
    assert rules(p) == [("speech_act", "SPEECH_ACT_UNKNOWN")]


@pytest.mark.parametrize(
    ("tracking_id", "rule"),
    [
        ("", "REQUIRED"),
        ("0B9F4C1E-5A4E-4C8E-9D65-0D4F2F6B7A10", "UUID_FORMAT"),
        ("0b9f4c1e5a4e4c8e9d650d4f2f6b7a10", "UUID_FORMAT"),
        ("{0b9f4c1e-5a4e-4c8e-9d65-0d4f2f6b7a10}", "UUID_FORMAT"),
        ("0b9f4c1e-5a4e-4c8e-9d65-0d4f2f6b7a10\n", "UUID_FORMAT"),
    ],
)
def test_tracking_id_must_be_a_canonical_uuid(tracking_id: str, rule: str) -> None:
    p = valid()
    p.tracking_id = tracking_id
    assert rules(p) == [("tracking_id", rule)]


@pytest.mark.parametrize(
    ("origin", "rule"),
    [("", "REQUIRED"), ("a" * 256, "LENGTH"), ("two words", "CHARSET"), ("bell\x07", "CHARSET")],
)
def test_origin_rules(origin: str, rule: str) -> None:
    p = valid()
    p.origin = origin
    assert rules(p) == [("origin", rule)]


def test_origin_of_255_characters_is_fine() -> None:
    p = valid()
    p.origin = "a" * 255
    assert rules(p) == []


@pytest.mark.parametrize("version", ["2.0", "1", "1.0 "])
def test_unknown_schema_versions_are_rejected_with_the_supported_list(version: str) -> None:
    p = valid()
    p.schema_version = version
    assert rules(p) == [("schema_version", "SCHEMA_VERSION_UNSUPPORTED")]
    [v] = validate_packet(p, LIMITS)
    assert "supported: 1.0, 1.1" in v.description


def _entry() -> custody_pb2.CustodyEntry:
    return custody_pb2.CustodyEntry(record=b"\x08\x00", signature=b"s" * 64, key_id="agent-key-1")


def test_schema_1_1_needs_exactly_the_originated_entry_and_complete_content() -> None:
    p = valid()
    p.schema_version = "1.1"
    assert rules(p) == [
        ("chain_of_custody", "CUSTODY_REQUIRED"),
        ("ttl_seconds", "REQUIRED"),
        ("dispatched_at", "REQUIRED"),
    ]
    p.ttl_seconds = 60
    p.dispatched_at.seconds = 1_800_000_000
    p.chain_of_custody.append(_entry())
    assert rules(p) == []
    p.chain_of_custody.append(_entry())
    assert rules(p) == [("chain_of_custody", "CUSTODY_REQUIRED")]


def test_schema_1_0_carries_no_entries_of_its_own() -> None:
    p = valid()
    p.chain_of_custody.append(_entry())
    assert rules(p) == [("chain_of_custody", "CUSTODY_NOT_ALLOWED")]


def test_custody_entry_shape() -> None:
    p = valid()
    p.schema_version = "1.1"
    p.ttl_seconds = 60
    p.dispatched_at.seconds = 1_800_000_000
    p.chain_of_custody.add(record=b"", signature=b"short", key_id="")
    assert rules(p) == [
        ("chain_of_custody[0].record", "REQUIRED"),
        ("chain_of_custody[0].signature", "SIGNATURE_LENGTH"),
        ("chain_of_custody[0].key_id", "REQUIRED"),
    ]


@pytest.mark.parametrize(("ttl", "ok"), [(0, True), (1, True), (86400, True), (86401, False)])
def test_ttl_range(ttl: int, ok: bool) -> None:
    p = valid()
    p.ttl_seconds = ttl
    assert rules(p) == ([] if ok else [("ttl_seconds", "TTL_RANGE")])


@pytest.mark.parametrize(
    ("topic", "rule"),
    [
        ("", "REQUIRED"),
        ("a" * 201, "LENGTH"),
        ("has space", "TOPIC_FORMAT"),
        ("{tag}", "TOPIC_FORMAT"),
        (".hidden", "TOPIC_FORMAT"),
    ],
)
def test_topic_rules(topic: str, rule: str) -> None:
    p = valid()
    p.topic = topic
    assert rules(p) == [("topic", rule)]


@pytest.mark.parametrize("confidence", [-0.01, 1.0000001, math.nan, math.inf])
def test_finding_confidence_outside_0_1_is_rejected(confidence: float) -> None:
    p = valid()
    p.finding.claim = "x"
    p.finding.confidence = confidence
    assert rules(p) == [("finding.confidence", "CONFIDENCE_RANGE")]


def test_finding_needs_a_claim_and_non_empty_citations() -> None:
    p = valid()
    p.finding.confidence = 0.5
    p.finding.citations.extend(["if://citation/1", ""])
    assert rules(p) == [("finding.claim", "REQUIRED"), ("finding.citations[1]", "REQUIRED")]


def test_context_needs_scope_and_name() -> None:
    p = valid()
    p.context.notes = "n"
    assert rules(p) == [("context.scope", "REQUIRED"), ("context.name", "REQUIRED")]


def test_raw_contents_need_a_media_type() -> None:
    p = valid()
    p.raw.data = b"{}"
    assert rules(p) == [("raw.content_type", "REQUIRED")]
    p.raw.content_type = "not a media type"
    assert rules(p) == [("raw.content_type", "MEDIA_TYPE_FORMAT")]
    p.raw.content_type = "application/json; charset=utf-8"
    assert rules(p) == []


def test_deeply_nested_data_is_rejected() -> None:
    p = valid()
    node = p.data
    for _ in range(40):
        node = node.fields["n"].struct_value
    node.fields["leaf"].bool_value = True  # else the deepest Value is empty (VALUE_KIND)
    assert rules(p) == [("data", "NESTING_DEPTH")]


def test_timestamps_out_of_range() -> None:
    p = valid()
    p.reply_by.seconds = 253402300800  # 10000-01-01
    assert rules(p) == [("reply_by", "TIMESTAMP_RANGE")]


def test_size_limit() -> None:
    p = valid()
    p.raw.content_type = "application/octet-stream"
    p.raw.data = b"\x00" * LIMITS.max_packet_bytes
    assert rules(p) == [("", "PACKET_TOO_LARGE")]


def test_all_violations_are_reported_at_once() -> None:
    p = packet_pb2.Packet()
    assert rules(p) == [
        ("tracking_id", "REQUIRED"),
        ("origin", "REQUIRED"),
        ("schema_version", "REQUIRED"),
        ("speech_act", "REQUIRED"),
        ("topic", "REQUIRED"),
    ]


@given(st.binary(max_size=512))
def test_any_parseable_bytes_validate_without_raising(data: bytes) -> None:
    try:
        p = packet_pb2.Packet.FromString(data)
    except Exception:
        return
    for v in validate_packet(p, LIMITS):
        assert v.rule
        assert v.description


# Every whitespace character, and characters around the C0/C1 control ranges.
_TRICKY = st.sampled_from(
    [
        *(chr(c) for c in range(0xA1)),
        *"\u1680\u2000\u200a\u200b\u2028\u2029\u202f\u205f\u3000\ufeff\U000e0001\ud800",
        "é",
        "界",
    ]
)


@given(st.text(alphabet=st.one_of(_TRICKY, st.characters()), max_size=12))
def test_the_fast_charset_checks_decide_as_the_patterns_do(value: str) -> None:
    assert _field_rules.printable_identifier(value) == bool(
        value and _field_rules._IDENTIFIER.match(value)
    )
    assert _field_rules.no_control(value) == bool(_field_rules._NO_CONTROL.match(value))
