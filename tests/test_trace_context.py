"""W3C Trace Context rules for Packet.trace_context (server _trace_context):
unit cases and properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from packetbus.v1 import packet_pb2
from packetbus_server._trace_context import (
    trace_id_of,
    traceparent_problem,
    tracestate_problem,
    validate_trace_context,
)
from packetbus_server._validation import Violation

GOOD = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
hex_digits = st.text("0123456789abcdef", min_size=1, max_size=1)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (GOOD, None),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", "format"),
        ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "format"),
        ("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", "format"),
        (GOOD + "-extra", "format"),
        (f"00-{'0' * 32}-00f067aa0ba902b7-01", "trace-id must not be all zeros"),
        (f"00-4bf92f3577b34da6a3ce929d0e0e4736-{'0' * 16}-01", "parent-id must not be all zeros"),
        ("", "format"),
    ],
)
def test_traceparent(value: str, problem: str | None) -> None:
    found = traceparent_problem(value)
    if problem == "format":
        assert found is not None
        assert found.startswith("must be a W3C traceparent, version 00")
    else:
        assert found == problem


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", None),
        ("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", None),
        (" rojo=1 ,\t,congo=2", None),
        ("tenant@vendor=x", None),
        (",".join(f"k{i}=v" for i in range(32)), None),
        (",".join(f"k{i}=v" for i in range(33)), "must have at most 32 list-members; got 33"),
        ("a=" + "x" * 511, "must be at most 512 characters; got 513"),
        ("a=1,a=2", "key 'a' appears twice"),
        ("A=1", "list-member 0"),
        ("a=1,b", "list-member 1"),
        ("a=x=y", "list-member 0"),
        ("a=", "list-member 0"),
    ],
)
def test_tracestate(value: str, problem: str | None) -> None:
    found = tracestate_problem(value)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert found.startswith(problem)


def test_a_trace_context_needs_its_traceparent() -> None:
    out: list[Violation] = []
    validate_trace_context(out, packet_pb2.TraceContext(tracestate="a=1"))
    assert out == [
        Violation("trace_context.traceparent", "REQUIRED", "is required when trace_context is set")
    ]


@given(
    st.text("0123456789abcdef", min_size=32, max_size=32),
    st.text("0123456789abcdef", min_size=16, max_size=16),
    st.text("0123456789abcdef", min_size=2, max_size=2),
)
def test_every_version_00_traceparent_with_nonzero_ids_is_accepted(
    trace_id: str, parent_id: str, flags: str
) -> None:
    value = f"00-{trace_id}-{parent_id}-{flags}"
    zero = trace_id == "0" * 32 or parent_id == "0" * 16
    assert (traceparent_problem(value) is None) is not zero


@given(st.text(max_size=80))
def test_any_other_text_is_refused_as_a_traceparent(value: str) -> None:
    parts = value.split("-")
    shaped = (
        len(parts) == 4
        and parts[0] == "00"
        and [len(p) for p in parts[1:]] == [32, 16, 2]
        and all(c in "0123456789abcdef" for c in "".join(parts))
    )
    if not shaped:
        assert traceparent_problem(value) is not None


@given(
    st.lists(
        st.tuples(
            st.from_regex(r"[a-z][a-z0-9_\-*/]{0,10}", fullmatch=True),
            st.from_regex(r"[!-+\--<>-~]{1,10}", fullmatch=True),
        ),
        max_size=40,
        unique_by=lambda kv: kv[0],
    )
)
def test_tracestate_members_are_counted_and_bounded(members: list[tuple[str, str]]) -> None:
    value = ",".join(f"{k}={v}" for k, v in members)
    ok = len(members) <= 32 and len(value) <= 512
    assert (tracestate_problem(value) is None) is ok


def test_the_request_log_reads_a_trace_id_by_the_same_rules() -> None:
    # One rule for a packet's trace_context and a call's traceparent metadata.
    good = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    assert trace_id_of(good) == "a" * 32
    for bad in (
        "ff-" + "a" * 32 + "-" + "b" * 16 + "-01",  # a version other than 00
        "00-" + "0" * 32 + "-" + "b" * 16 + "-01",  # an all-zero trace-id
        "00-" + "a" * 32 + "-" + "0" * 16 + "-01",  # an all-zero parent-id
        "00-" + "A" * 32 + "-" + "b" * 16 + "-01",  # upper case
        good + "-extra",
        "",
    ):
        assert trace_id_of(bad) is None, bad
        assert traceparent_problem(bad) is not None
