"""How deep JSON-like data (a protobuf Struct) may nest, checked at C speed where it can be.

Deeply nested JSON is a classic parser-exhaustion input for every consumer downstream
(JSON encoders recurse), so packets' `data`, task payloads and results, and context data
are bounded here once (MAX_STRUCT_DEPTH containers, the root Struct being depth 1).
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import struct_pb2

from ._violation import Violation

MAX_STRUCT_DEPTH = 32


# Every container below a Struct's root is a Value's struct_value (field 5) or
# list_value (field 6), each serialized after a one-byte tag: (5 << 3) | 2 and
# (6 << 3) | 2. A set oneof member is always written, even when empty.
_STRUCT_VALUE_TAG = b"\x2a"
_LIST_VALUE_TAG = b"\x32"


def struct_depth(
    out: list[Violation], path: str, root: struct_pb2.Struct, *, encoded: bytes | None = None
) -> None:
    """One NESTING_DEPTH violation at `path` when `root` nests deeper than
    MAX_STRUCT_DEPTH; `encoded`: root's serialization, when the caller has it."""
    # Deeply nested JSON is a classic parser-exhaustion input for every consumer
    # downstream (JSON encoders recurse), so it is bounded here once.
    #
    # Walking every Value costs a Python wrapper each (~10 us for a 0.5 KB JSON
    # object, issue 16). Instead, count the bytes that could be container tags in
    # a container's serialization (C speed, ~0.6 us for 0.5 KB): a container d
    # levels below it sits inside d containers, each with its own tag byte, so
    # nothing below it is deeper than its depth plus that count, and the walk
    # skips it. Text and numbers can hold those bytes too, which only overcounts:
    # the walk then looks inside, as it always did. Each byte is counted once per
    # container around it (at most MAX_STRUCT_DEPTH), all in C.
    stack: list[tuple[struct_pb2.Struct | struct_pb2.ListValue, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_STRUCT_DEPTH:
            out.append(Violation(path, "NESTING_DEPTH", f"nests deeper than {MAX_STRUCT_DEPTH}"))
            return
        if encoded is None or node is not root:
            encoded = node.SerializeToString()
        if encoded.count(_STRUCT_VALUE_TAG) + encoded.count(_LIST_VALUE_TAG) <= (
            MAX_STRUCT_DEPTH - depth
        ):
            continue
        values: Iterable[struct_pb2.Value] = (
            node.fields.values() if isinstance(node, struct_pb2.Struct) else node.values
        )
        for value in values:
            kind = value.WhichOneof("kind")
            if kind == "struct_value":
                stack.append((value.struct_value, depth + 1))
            elif kind == "list_value":
                stack.append((value.list_value, depth + 1))


def struct_depth_reference(out: list[Violation], path: str, root: struct_pb2.Struct) -> None:
    """The check before issue 16, kept verbatim as the reference that tests/test_struct_depth.py
    and bench/struct_depth_bench.py compare `struct_depth` with (the server does not call it):
    one NESTING_DEPTH violation at `path` when a Struct or ListValue nests deeper than
    MAX_STRUCT_DEPTH (the root Struct is depth 1)."""
    stack: list[tuple[struct_pb2.Struct | struct_pb2.ListValue, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_STRUCT_DEPTH:
            out.append(Violation(path, "NESTING_DEPTH", f"nests deeper than {MAX_STRUCT_DEPTH}"))
            return
        values: Iterable[struct_pb2.Value] = (
            node.fields.values() if isinstance(node, struct_pb2.Struct) else node.values
        )
        for value in values:
            kind = value.WhichOneof("kind")
            if kind == "struct_value":
                stack.append((value.struct_value, depth + 1))
            elif kind == "list_value":
                stack.append((value.list_value, depth + 1))
