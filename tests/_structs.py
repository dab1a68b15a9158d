"""Generated JSON-like data (google.protobuf.Struct) for property tests: random
trees of every kind of Value (an empty one too), text full of the bytes the
validation's fast paths look for, and chains of containers around the depth limit."""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2
from hypothesis import strategies as st

from packetbus_server._struct_depth import MAX_STRUCT_DEPTH

# A tree is a leaf ("null", "number", "string", "bool" or "unset": a Value with no
# kind) or a container ("struct" with (key, tree) pairs, "list" with trees).
Tree = tuple[str, Any]

# '*' and '2' are the container tags' bytes (0x2a, 0x32): text full of them
# make the depth check look inside a shallow container; "\x12\x00" and "\n\x00"
# are an empty Value's bytes, which make the VALUE_KIND check walk.
_TEXT = st.text(alphabet=st.sampled_from("*2a\x00\x12\né界"), max_size=40)
_LEAF: st.SearchStrategy[Tree] = st.one_of(
    st.just(("null", None)),
    st.tuples(st.just("number"), st.floats(allow_nan=True, allow_infinity=True)),
    st.tuples(st.just("string"), _TEXT),
    st.tuples(st.just("bool"), st.booleans()),
    st.just(("unset", None)),
    # Only a field Value does not have (a kind newer than this build): not empty.
    st.just(("unknown", None)),
)


def _containers(children: st.SearchStrategy[Tree]) -> st.SearchStrategy[Tree]:
    return st.one_of(
        st.tuples(st.just("list"), st.lists(children, max_size=4)),
        st.tuples(
            st.just("struct"),
            st.lists(st.tuples(_TEXT, children), max_size=4, unique_by=lambda kv: kv[0]),
        ),
    )


_TREE = st.recursive(_LEAF, _containers, max_leaves=30)


def fill(value: struct_pb2.Value, tree: Tree) -> None:
    kind, content = tree
    if kind == "null":
        value.null_value = struct_pb2.NULL_VALUE
    elif kind == "number":
        value.number_value = content
    elif kind == "string":
        value.string_value = content
    elif kind == "bool":
        value.bool_value = content
    elif kind == "unknown":
        value.MergeFromString(b"\x3a\x01x")  # field 7, length-delimited
    elif kind == "list":
        value.list_value.SetInParent()  # an empty list is still a container
        for child in content:
            fill(value.list_value.values.add(), child)
    elif kind == "struct":
        value.struct_value.SetInParent()
        fill_struct(value.struct_value, content)


def fill_struct(node: struct_pb2.Struct, pairs: list[tuple[str, Tree]]) -> None:
    for key, child in pairs:
        fill(node.fields[key], child)


@st.composite
def structs(draw: st.DrawFn) -> struct_pb2.Struct:
    """A random tree, or a chain of containers ending around the depth limit
    (a random list/struct mix, random trees beside it at random levels)."""
    root = struct_pb2.Struct()
    if draw(st.booleans()):
        fill_struct(root, draw(st.lists(st.tuples(_TEXT, _TREE), max_size=5)))
        return root
    length = draw(st.integers(MAX_STRUCT_DEPTH - 4, MAX_STRUCT_DEPTH + 3))
    node: struct_pb2.Struct | struct_pb2.ListValue = root
    for _ in range(length - 1):
        if draw(st.booleans()):
            tree = draw(_TREE)
            fill(
                node.fields["side"] if isinstance(node, struct_pb2.Struct) else node.values.add(),
                tree,
            )
        value = node.fields["next"] if isinstance(node, struct_pb2.Struct) else node.values.add()
        if draw(st.booleans()):
            value.list_value.SetInParent()
            node = value.list_value
        else:
            value.struct_value.SetInParent()
            node = value.struct_value
    return root
