"""A rule's content fields (``[rules.fields]``): a dotted path resolved in a packet's
contents (`resolve`) and the operators that compare what it finds (eq ne in not_in
gt ge lt le glob exists).

Apart from the other match keys (_policy_matchers) because paths and operators are
a small language of their own, with its own rules (TOML true is not 1, a missing
field matches only exists = false).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from google.protobuf import struct_pb2
from google.protobuf.message import Message

from packetbus.v1 import packet_pb2

from ._policy import Check, PolicyError
from ._policy_matchers import glob_matcher, string_list

_OPERATORS = ("eq", "ne", "in", "not_in", "gt", "ge", "lt", "le", "glob", "exists")
Scalar = str | float | bool | None
_MISSING = object()


def _value(v: struct_pb2.Value) -> object:
    kind = v.WhichOneof("kind")
    if kind == "number_value":
        return v.number_value
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "struct_value":
        return v.struct_value
    if kind == "list_value":
        return [_value(x) for x in v.list_value.values]
    return None


def resolve(packet: packet_pb2.Packet, path: Sequence[str]) -> object:
    """The value at `path` in the packet's contents, or _MISSING."""
    kind = packet.WhichOneof("contents")
    if kind is None or kind == "raw":
        return _MISSING
    node: object = getattr(packet, kind)
    for part in path:
        if isinstance(node, struct_pb2.Struct):
            if part not in node.fields:
                return _MISSING
            node = _value(node.fields[part])
        elif isinstance(node, Message):
            descriptor = node.DESCRIPTOR.fields_by_name.get(part)
            if descriptor is None:
                return _MISSING
            if descriptor.message_type is not None:
                try:
                    if not node.HasField(part):
                        return _MISSING
                except ValueError:  # repeated and map fields have no presence
                    pass
            node = getattr(node, part)
        elif isinstance(node, Mapping):
            if part not in node:
                return _MISSING
            node = node[part]
        else:
            return _MISSING
    if isinstance(node, int) and not isinstance(node, bool):
        return float(node)
    if isinstance(node, Message):
        return node  # compared with nothing: only `exists` sees it
    if hasattr(node, "__len__") and not isinstance(node, str | Mapping):
        return list(node)  # type: ignore[call-overload]
    return node


def _scalar(value: object, where: str) -> Scalar:
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise PolicyError(f"{where}: numbers must be finite")
        return float(value)
    raise PolicyError(f"{where}: expected a string, number or boolean, not {value!r}")


def _equal(a: object, b: Scalar) -> bool:
    # TOML true is not 1: booleans equal booleans only.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return a == b


def _number(value: object) -> float | None:
    if isinstance(value, float) and not isinstance(value, bool):
        return value
    return None


def _operator(op: str, arg: object, where: str) -> Callable[[object], bool]:
    if op in ("eq", "ne"):
        want = _scalar(arg, where)
        if op == "eq":
            return lambda v: _equal(v, want)
        return lambda v: not _equal(v, want)
    if op in ("in", "not_in"):
        if not isinstance(arg, list) or not arg:
            raise PolicyError(f"{where}: {op} takes a non-empty list")
        options = [_scalar(x, f"{where}.{op}") for x in arg]
        if op == "in":
            return lambda v: any(_equal(v, o) for o in options)
        return lambda v: not any(_equal(v, o) for o in options)
    if op in ("gt", "ge", "lt", "le"):
        if isinstance(arg, bool) or not isinstance(arg, int | float):
            raise PolicyError(f"{where}: {op} takes a number, not {arg!r}")
        bound = float(_scalar(arg, where))  # type: ignore[arg-type]
        compare: Callable[[float], bool] = {
            "gt": lambda x: x > bound,
            "ge": lambda x: x >= bound,
            "lt": lambda x: x < bound,
            "le": lambda x: x <= bound,
        }[op]

        def numeric(v: object) -> bool:
            number = _number(v)
            return number is not None and compare(number)

        return numeric
    if op == "glob":
        match = glob_matcher(string_list(arg, f"{where}.glob"))
        return lambda v: isinstance(v, str) and match(v)
    raise PolicyError(f"{where}: unknown operator {op!r}; expected one of {list(_OPERATORS)}")


def field_check(path: str, condition: object, where: str) -> Check:
    parts = path.split(".")
    if not all(parts):
        raise PolicyError(f"{where}: the path has an empty segment")
    if isinstance(condition, dict):
        if not condition:
            raise PolicyError(f"{where}: the condition table is empty")
        exists: bool | None = None
        tests = []
        for op, arg in condition.items():
            if op == "exists":
                if not isinstance(arg, bool):
                    raise PolicyError(f"{where}: exists takes true or false")
                exists = arg
            else:
                tests.append(_operator(op, arg, where))
        if exists is False and tests:
            raise PolicyError(f"{where}: exists = false cannot be combined with other operators")
        all_tests = tuple(tests)

        def check(packet: packet_pb2.Packet) -> bool:
            value = resolve(packet, parts)
            if value is _MISSING:
                return exists is False
            if exists is False:
                return False
            return all(t(value) for t in all_tests)

        return check
    if isinstance(condition, list):
        raise PolicyError(f"{where}: to match any of several values write {{ in = [...] }}")
    equal = _operator("eq", condition, where)
    return lambda packet: (value := resolve(packet, parts)) is not _MISSING and equal(value)
