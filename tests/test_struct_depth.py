"""The nesting-depth check of JSON-like contents (google.protobuf.Struct).

`struct_depth` skips every container whose serialization holds too few possible
container tags to nest too deep and walks the rest (issue 16); it must reject
exactly what the walk over every Value that it replaced rejected
(`struct_depth_reference`, kept verbatim), and what an independent recursive
oracle says.
"""

from __future__ import annotations

import pytest
from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError
from hypothesis import given, reject, settings

from packetbus_server._struct_depth import MAX_STRUCT_DEPTH, struct_depth, struct_depth_reference
from packetbus_server._validation import Violation
from tests._structs import structs


def both(root: struct_pb2.Struct) -> tuple[list[Violation], list[Violation]]:
    new: list[Violation] = []
    old: list[Violation] = []
    struct_depth(new, "data", root)
    struct_depth_reference(old, "data", root)
    return new, old


def container_depth(root: struct_pb2.Struct) -> int:
    """The depth of the deepest container, recursively (root = 1): an oracle
    independent of both walks."""

    def value_depth(value: struct_pb2.Value) -> int:
        kind = value.WhichOneof("kind")
        if kind == "struct_value":
            return struct_nesting(value.struct_value)
        if kind == "list_value":
            return 1 + max((value_depth(v) for v in value.list_value.values), default=0)
        return 0

    def struct_nesting(node: struct_pb2.Struct) -> int:
        return 1 + max((value_depth(v) for v in node.fields.values()), default=0)

    return struct_nesting(root)


@settings(max_examples=400)
@given(structs())
def test_the_cheap_check_rejects_exactly_what_the_walk_rejects(root: struct_pb2.Struct) -> None:
    new, old = both(root)
    assert new == old
    expected = (
        [Violation("data", "NESTING_DEPTH", f"nests deeper than {MAX_STRUCT_DEPTH}")]
        if container_depth(root) > MAX_STRUCT_DEPTH
        else []
    )
    assert new == expected


@settings(max_examples=200)
@given(structs())
def test_a_struct_parsed_again_decides_the_same(root: struct_pb2.Struct) -> None:
    # What the server sees is parsed from the wire, not built in Python.
    try:
        parsed = struct_pb2.Struct.FromString(root.SerializeToString())
    except DecodeError:
        # Past the parser's recursion limit (messages, not containers): such a
        # packet never reaches validation.
        reject()
    new, old = both(parsed)
    assert new == old


def chain(depth: int, kind: str, padding: str = "") -> struct_pb2.Struct:
    """A Struct whose deepest container (empty) is at `depth`; `padding` is text
    put beside the root's first container."""
    root = struct_pb2.Struct()
    if padding:
        root.fields["pad"].string_value = padding
    node: struct_pb2.Struct | struct_pb2.ListValue = root
    for _ in range(depth - 1):
        value = node.fields["n"] if isinstance(node, struct_pb2.Struct) else node.values.add()
        if kind == "list":
            value.list_value.SetInParent()
            node = value.list_value
        else:
            value.struct_value.SetInParent()
            node = value.struct_value
    return root


@pytest.mark.parametrize("kind", ["list", "struct"])
@pytest.mark.parametrize("padding", ["", "2*" * 40])
def test_the_limit_is_inclusive_on_either_path(kind: str, padding: str) -> None:
    for depth in (MAX_STRUCT_DEPTH - 1, MAX_STRUCT_DEPTH):
        new, old = both(chain(depth, kind, padding))
        assert (new, old) == ([], [])
    for depth in (MAX_STRUCT_DEPTH + 1, MAX_STRUCT_DEPTH + 2):
        new, old = both(chain(depth, kind, padding))
        assert new == old == [Violation("data", "NESTING_DEPTH", "nests deeper than 32")]


def test_unknown_fields_count_but_do_not_nest() -> None:
    # Field 7 (not in Value) holding tag-like bytes: kept by the parser and
    # serialized again, so it reaches the walk, which ignores it as before.
    value = struct_pb2.Value.FromString(b"\x3a\x40" + b"\x2a" * 64)
    root = struct_pb2.Struct()
    root.fields["u"].CopyFrom(value)
    assert root.SerializeToString().count(b"\x2a") >= MAX_STRUCT_DEPTH
    assert both(root) == ([], [])
