"""Requests for the surface fuzz (tests/test_fuzz_surface.py), drawn from descriptors.

Random-but-typed messages for any input descriptor: ints at their boundaries, floats
incl. NaN, enums incl. unknown numbers, nested and repeated fields, and strings biased
towards the shapes the server parses (cursors, delivery ids, page tokens, dates, ids),
half the time valid so the request gets past its first check.
"""

from __future__ import annotations

import uuid
from typing import Any

from google.protobuf import descriptor, message, message_factory
from hypothesis import strategies as st

import packetbus
from packetbus.v1 import packet_pb2, speech_act_pb2

_FD = descriptor.FieldDescriptor
_INT_RANGES = {
    _FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    _FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    _FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    _FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    _FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    _FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    _FD.TYPE_UINT32: (0, 2**32 - 1),
    _FD.TYPE_FIXED32: (0, 2**32 - 1),
    _FD.TYPE_UINT64: (0, 2**64 - 1),
    _FD.TYPE_FIXED64: (0, 2**64 - 1),
}

# Shapes the server parses: stream ids, delivery ids, page tokens, dates, numbers in
# other scripts' digits and past 2^64, ids of every length the limits speak of.
_SHAPES = [
    "",
    "0-0",
    "0-\u0660",
    "\u0661\u0662-0",
    "18446744073709551615-18446744073709551615",
    "18446744073709551616-0",
    "9007199254740993-0",
    "1700000000000-0",
    "1700000000000-0:1",
    "1700000000000-0:\u0661",
    "99999999999999999999-0:99999999999",
    "1700000000000:" + str(uuid.UUID(int=0)),
    "\u0661\u0667:" + str(uuid.UUID(int=1)),
    "fz.topic 1700000000000-0",
    "fz.topic 18446744073709551616-0",
    "2026-13-45",
    "\u0662\u0660\u0662\u0666-\u0660\u0661-\u0660\u0661",
    "2026-01-01",
    "-1",
    "9" * 40,
    "1e309",
    "nan",
    "fz.topic",
    "inbox/fz-agent",
    "fz-agent",
    "fz-scope",
    "\u5b57" * 70,
    "\u5b57" * 256,
    "a" * 256,
    "a" * 5000,
    str(uuid.UUID(int=2)),
    "remediation",
    "{x}",
    "a b",
    "\x00",
]


# Values that pass a field's own rule, so that a request often gets past the first
# check and reaches the code behind it.
_VALID_BY_NAME = {
    "topic": ["fz.topic", "inbox/fz-agent"],
    "queue": ["fz.queue"],
    "tracking_id": [str(uuid.UUID(int=3))],
    "group": ["g"],
    "name": ["g", "doc"],
    "scope": ["fz-scope"],
    "task_id": ["fz-task"],
    "origin": ["fz-agent"],
    "author": ["fz-agent"],
    "agent": ["fz-agent"],
    "agent_id": ["fz-agent"],
    "consumer": ["fz-agent"],
    "worker_id": ["fz-agent"],
    "id": ["fz-agent", "1700000000000-0"],
    "date": ["2026-01-01"],
    "schema_version": ["1.0", "1.1"],
}


# Stream ids in ASCII and other digits, of any length up to past 2^64.
_IDS = st.from_regex(r"[0-9\u0660-\u0669]{1,22}-[0-9\u0660-\u0669]{1,22}", fullmatch=True)
# Fields that hold cursors, delivery ids and page tokens get mostly id shapes.
_ID_FIELDS = ("cursor", "token", "delivery_id", "ack_ids", "extend_ids", "ids")


def _strings(name: str) -> st.SearchStrategy[str]:
    if any(part in name for part in _ID_FIELDS) or name == "id":
        return st.one_of(
            _IDS,
            _IDS.map(lambda i: f"{i}:1"),
            _IDS.map(lambda i: f"fz.topic {i}"),
            st.sampled_from(_SHAPES),
        )
    # Half the time a valid value, so the other fields of the request get checked too.
    return st.one_of(
        st.sampled_from(_VALID_BY_NAME.get(name, ["fz-agent"])),
        st.one_of(st.sampled_from(_SHAPES), _IDS, st.text(max_size=24)),
    )


def _scalar(field: Any) -> st.SearchStrategy[Any]:
    t = field.type
    if t in _INT_RANGES:
        lo, hi = _INT_RANGES[t]
        edges = [lo, hi, 0, 1, -1, 2**31 - 1, 2**53 + 1, 2**63 - 1]
        return st.one_of(
            st.sampled_from([e for e in edges if lo <= e <= hi]),
            st.integers(lo, hi),
        )
    if t == _FD.TYPE_BOOL:
        return st.booleans()
    if t == _FD.TYPE_DOUBLE:
        return st.floats()
    if t == _FD.TYPE_FLOAT:
        return st.floats(width=32)
    if t == _FD.TYPE_STRING:
        return _strings(field.name)
    if t == _FD.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == _FD.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-3, 1000))
    raise AssertionError(f"unhandled field type {t}")


def _fill(draw: st.DrawFn, msg: message.Message, depth: int, *, in_twelve: int = 9) -> None:
    """Set each field of `msg` with a chance of `in_twelve`/12, recursing `depth` deep."""
    for field in msg.DESCRIPTOR.fields:
        if draw(st.integers(0, 11)) >= in_twelve:
            continue
        repeated = field.is_repeated
        if field.type == _FD.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:  # type: ignore[union-attr]
                entry: Any = field.message_type
                key_f = entry.fields_by_name["key"]
                val_f = entry.fields_by_name["value"]
                for _ in range(draw(st.integers(0, 2))):
                    key = draw(_scalar(key_f))
                    target = getattr(msg, field.name)
                    if val_f.type == _FD.TYPE_MESSAGE:
                        if depth > 0:
                            _fill(draw, target[key], depth - 1)
                    else:
                        target[key] = draw(_scalar(val_f))
                continue
            if depth <= 0:
                continue
            if repeated:
                for _ in range(draw(st.integers(0, 2))):
                    _fill(draw, getattr(msg, field.name).add(), depth - 1)
            else:
                sub = getattr(msg, field.name)
                sub.SetInParent()
                _fill(draw, sub, depth - 1)
            continue
        try:
            if repeated:
                getattr(msg, field.name).extend(draw(st.lists(_scalar(field), max_size=3)))
            else:
                setattr(msg, field.name, draw(_scalar(field)))
        except (ValueError, TypeError):
            pass  # a closed enum refusing an unknown number: the wire form is not reachable


@st.composite
def requests(draw: st.DrawFn, desc: descriptor.Descriptor) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=48))  # most likely not a valid message at all
    msg = message_factory.GetMessageClass(desc)()
    if draw(st.integers(0, 2)) == 0:
        _one_bad_string(draw, msg)
        return msg.SerializeToString()
    _fill(draw, msg, depth=4)
    if draw(st.booleans()):
        # A valid packet where the request holds one, then a few fields changed.
        for field in msg.DESCRIPTOR.fields:
            if field.message_type is packet_pb2.Packet.DESCRIPTOR and not field.is_repeated:
                packet = getattr(msg, field.name)
                packet.CopyFrom(valid_packet())
                _fill(draw, packet, depth=2, in_twelve=1)
    return msg.SerializeToString()


def string_fields(msg: message.Message) -> list[Any]:
    return [f for f in msg.DESCRIPTOR.fields if f.type == _FD.TYPE_STRING]


def with_one_odd(msg: message.Message, bad: Any, odd: str) -> None:
    """Every top-level string of `msg` a valid value but `bad`, which gets `odd`: so the
    check of that field is reached, whichever field the handler looks at first."""
    for field in string_fields(msg):
        value = odd if field is bad else _VALID_BY_NAME.get(field.name, ["fz-agent"])[0]
        if field.is_repeated:
            getattr(msg, field.name).append(value)
        else:
            setattr(msg, field.name, value)


def _one_bad_string(draw: st.DrawFn, msg: message.Message) -> None:
    strings = string_fields(msg)
    if strings:
        odd = draw(st.one_of(st.sampled_from(_SHAPES), _IDS, _IDS.map(lambda i: f"{i}:1")))
        with_one_odd(msg, draw(st.sampled_from(strings)), odd)


def valid_packet() -> packet_pb2.Packet:
    packet = packet_pb2.Packet(
        origin="fz-agent", topic="fz.topic", speech_act=speech_act_pb2.SPEECH_ACT_INFORM
    )
    packet.data.update({"k": "v"})
    return packetbus.fill_defaults(packet)
