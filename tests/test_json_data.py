"""JSON-like data (google.protobuf.Struct) holds no empty Value (no kind set).

A Node agent written from the protos alone (grpc-js's proto-loader with keepCase)
sent `{number_value: 120}` for a Value: the library dropped the field, the server
stored an empty Value and the number was lost without a word. Every Struct a
client sends (a packet's `data`, a task's payload and result, a context's data)
is now checked (`_json_data.check_json_data`): an empty Value is INVALID_ARGUMENT,
VALUE_KIND, and nothing is written. The check looks for an empty Value's bytes
first and walks only when they are there: property tests hold it to a full walk.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import pytest
import redis.asyncio as redis_asyncio
from google.protobuf import struct_pb2
from hypothesis import given, settings

import packetbus
from packetbus.v1 import task_service_pb2 as task_pb
from packetbus_server._json_data import check_json_data, kindless_value
from packetbus_server._violation import Violation
from tests._structs import structs
from tests.conftest import new_packet, unique


def _values(node: struct_pb2.Struct | struct_pb2.ListValue) -> Iterator[struct_pb2.Value]:
    children = node.fields.values() if isinstance(node, struct_pb2.Struct) else node.values
    for value in children:
        yield value
        kind = value.WhichOneof("kind")
        if kind == "struct_value":
            yield from _values(value.struct_value)
        elif kind == "list_value":
            yield from _values(value.list_value)


def _has_empty_value(root: struct_pb2.Struct) -> bool:
    """The oracle: a recursive walk over every Value, independent of the check."""
    return any(v.WhichOneof("kind") is None and v.ByteSize() == 0 for v in _values(root))


def _at(root: struct_pb2.Struct, where: str) -> struct_pb2.Value:
    """The Value at a `$["key"][0]` path, read back step by step."""
    node: struct_pb2.Struct | struct_pb2.ListValue = root
    value = struct_pb2.Value()
    rest = where.removeprefix("$")
    while rest:
        step, rest = rest[1 : rest.index("]")], rest[rest.index("]") + 1 :]
        if isinstance(node, struct_pb2.Struct):
            value = node.fields[json.loads(step)]
        else:
            value = node.values[int(step)]
        kind = value.WhichOneof("kind")
        if kind == "struct_value":
            node = value.struct_value
        elif kind == "list_value":
            node = value.list_value
    return value


def _kinds(root: struct_pb2.Struct) -> list[Violation]:
    out: list[Violation] = []
    check_json_data(out, "data", root)
    return [v for v in out if v.rule == "VALUE_KIND"]


@settings(max_examples=400)
@given(structs())
def test_the_check_refuses_exactly_the_data_that_holds_an_empty_value(
    root: struct_pb2.Struct,
) -> None:
    found = _kinds(root)
    assert len(found) == int(_has_empty_value(root))
    where = kindless_value(root)
    assert (where is not None) == _has_empty_value(root)
    if where is not None:
        assert _at(root, where).ByteSize() == 0
        assert where in found[0].description


@settings(max_examples=200)
@given(structs())
def test_data_parsed_from_the_wire_decides_the_same(root: struct_pb2.Struct) -> None:
    try:
        parsed = struct_pb2.Struct.FromString(root.SerializeToString())
    except Exception:  # past the parser's recursion limit: never validated
        return
    assert len(_kinds(parsed)) == int(_has_empty_value(parsed))


def test_the_place_of_the_empty_value_is_named() -> None:
    root = struct_pb2.Struct()
    root.fields["minutes"].Clear()
    root.fields["ok"].bool_value = True
    root.fields["list"].list_value.values.add().number_value = 1
    root.fields["list"].list_value.values.add()
    # Keys in sorted order: "list" before "minutes".
    [violation] = _kinds(root)
    assert violation == Violation(
        "data",
        "VALUE_KIND",
        'the value at $["list"][1] has no kind set; a JSON value is one of null_value, '
        "number_value, string_value, bool_value, struct_value, list_value (check that "
        "your protobuf library set the field you meant)",
    )


def test_a_value_of_a_kind_this_server_does_not_know_passes() -> None:
    root = struct_pb2.Struct()
    root.fields["future"].MergeFromString(b"\x3a\x01x")  # field 7: not empty
    root.fields["text"].string_value = "\x12\x00\n\x00"  # an empty Value's bytes
    assert _kinds(root) == []


def _with_empty_value(struct: struct_pb2.Struct) -> None:
    struct.fields["estimate"].Clear()
    struct.fields["unit"].string_value = "minutes"


async def _log_length(raw_redis: redis_asyncio.Redis, topic: str) -> int:
    return int(await raw_redis.xlen(f"pb:{{{topic}}}:log"))


async def test_a_packet_whose_data_holds_an_empty_value_is_refused_and_not_stored(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    packet = new_packet(topic)
    _with_empty_value(packet.data)
    with pytest.raises(packetbus.PacketbusError) as refused:
        await client.dispatch(packet, timeout=10)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.reason) for v in refused.value.field_violations] == [("data", "VALUE_KIND")]
    assert '$["estimate"]' in refused.value.field_violations[0].description
    assert await _log_length(raw_redis, topic) == 0


async def test_a_task_payload_or_result_holding_an_empty_value_is_refused(
    client: packetbus.Client,
) -> None:
    queue = client.task_queue(unique("queue"))
    task = packetbus.Task(id="t-1", description="estimate")
    _with_empty_value(task.payload)
    with pytest.raises(packetbus.PacketbusError) as refused:
        await queue.post(task, origin="planner")
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.reason) for v in refused.value.field_violations] == [
        ("packet.task.payload", "VALUE_KIND")
    ]
    assert await queue.tasks() == []

    await queue.post(packetbus.Task(id="t-2", description="estimate"), origin="planner")
    claimed = await queue.claim("worker-1")
    assert claimed is not None
    request = task_pb.CompleteTaskRequest(
        queue=queue.name, task_id="t-2", fencing_token=claimed.fencing_token
    )
    _with_empty_value(request.result)
    with pytest.raises(packetbus.PacketbusError) as refused:
        await queue._call(queue._stub.CompleteTask, request, 10)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.reason) for v in refused.value.field_violations] == [
        ("result", "VALUE_KIND")
    ]
    state = await queue.get("t-2")
    assert state.status == task_pb.TASK_STATUS_CLAIMED
