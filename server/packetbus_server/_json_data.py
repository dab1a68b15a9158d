"""The rules every piece of JSON-like data (a protobuf Struct) follows: packets'
`data`, task payloads and results, context data.

- It nests at most MAX_STRUCT_DEPTH deep (_struct_depth).
- No google.protobuf.Value in it is empty (no kind set, nothing else in it). An
  empty Value is no JSON value: the proto3 JSON mapping has none for it (Python's
  json_format turns it into null, other runtimes refuse to print it). A client
  sends one when its protobuf library dropped the field it meant to set, e.g.
  protobufjs (grpc-js's proto-loader) with keepCase, given `{number_value: 1}`
  for a Value whose JSON name is numberValue: the number is lost without a
  word. So it is refused,
  INVALID_ARGUMENT with reason VALUE_KIND at the data's field path, and the
  description names where the empty Value sits. A Value that holds fields this
  server does not know (a kind added to Value after this server was built) is
  not empty, and passes as before.
"""

from __future__ import annotations

import json

from google.protobuf import struct_pb2

from ._struct_depth import struct_depth
from ._violation import Violation

# An empty Value serializes as an empty message: in a Struct's map entry as
# the entry's value field, tag (2 << 3) | 2 then length 0 (upb writes a map
# entry's value even when it is empty), and in a ListValue as an element of
# `values`, tag (1 << 3) | 2 then length 0. When neither pair is in the data's
# serialization (C speed), it holds no such Value and is not walked; text or
# numbers holding those bytes only make it walk.
_EMPTY_ENTRY_VALUE = b"\x12\x00"
_EMPTY_LIST_ELEMENT = b"\x0a\x00"


def check_json_data(out: list[Violation], path: str, root: struct_pb2.Struct) -> None:
    """Append to `out` a violation at `path` for each rule `root` breaks (see the
    module docstring): NESTING_DEPTH, VALUE_KIND."""
    encoded = root.SerializeToString()
    struct_depth(out, path, root, encoded=encoded)
    # A zero byte first (memchr, ~0.1 us for 0.5 KB): many JSON objects have none,
    # and the two-byte searches cost ~0.5 us each (their first bytes, field tags,
    # are everywhere in a Struct's serialization).
    if b"\x00" in encoded and (_EMPTY_ENTRY_VALUE in encoded or _EMPTY_LIST_ELEMENT in encoded):
        where = kindless_value(root)
        if where is not None:
            out.append(
                Violation(
                    path,
                    "VALUE_KIND",
                    f"the value at {where} has no kind set; a JSON value is one of "
                    "null_value, number_value, string_value, bool_value, struct_value, "
                    "list_value (check that your protobuf library set the field you meant)",
                )
            )


def kindless_value(root: struct_pb2.Struct) -> str | None:
    """Where the first empty Value (no kind, no unknown fields) sits in `root` (keys
    in sorted order), as a JSON path like `$["key"][0]`, or None when there is none.
    Walks every Value: check_json_data calls it only when the serialization may
    hold one."""
    stack: list[tuple[struct_pb2.Value, str]] = []

    def push(node: struct_pb2.Struct | struct_pb2.ListValue, where: str) -> None:
        if isinstance(node, struct_pb2.Struct):
            items = sorted(node.fields.items(), reverse=True)
            stack.extend((value, f"{where}[{json.dumps(key)}]") for key, value in items)
        else:
            count = len(node.values)
            stack.extend((node.values[i], f"{where}[{i}]") for i in reversed(range(count)))

    push(root, "$")
    while stack:
        value, where = stack.pop()
        kind = value.WhichOneof("kind")
        if kind is None:
            if value.ByteSize() == 0:
                return where
            continue
        if kind == "struct_value":
            push(value.struct_value, where)
        elif kind == "list_value":
            push(value.list_value, where)
    return None
