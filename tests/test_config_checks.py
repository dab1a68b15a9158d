"""ServerConfig and Limits refuse values out of range when they are made (a server
embedded from Python, packetbus_server.start, as `packetbus serve` refuses its flags):
ValueError naming the field, whichever field it is."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import pytest

from packetbus_server import Limits, ServerConfig, _config_checks, start

_FLOATS = [f.name for f in dataclasses.fields(Limits) if f.type in ("float", float)]
_INTS = [f.name for f in dataclasses.fields(Limits) if f.name not in _FLOATS]
# Every cap ServerConfig has (a field named max_*), so a new one cannot go unchecked.
_CAPS = [f.name for f in dataclasses.fields(ServerConfig) if f.name.startswith("max_")]
_TIMERS = [
    ("grace_seconds", -1.0),
    ("retry_budget_seconds", 0.0),
    ("store_start_seconds", 0.0),
    ("health_interval_seconds", 0.0),
    ("keepalive_seconds", 0.0),
    ("keepalive_timeout_seconds", 0.0),
    ("drain_notice_seconds", -0.5),
]


def _refused(make: Any, field: str, **values: Any) -> str:
    with pytest.raises(ValueError, match=rf"\b{re.escape(field)}\b") as caught:
        make(**values)
    return str(caught.value)


def test_there_are_fields_of_each_kind_to_check() -> None:
    assert len(_INTS) > 40
    assert _FLOATS == ["policy_reload_seconds", "agent_reaper_interval_seconds"]


@pytest.mark.parametrize("field", _INTS)
def test_every_whole_limit_refuses_less_than_its_least_and_a_non_integer(field: str) -> None:
    least = 0 if field == "context_replaced_grace_seconds" else 1
    message = _refused(Limits, f"Limits.{field}", **{field: least - 1})
    assert message.endswith(f"not {least - 1}")
    _refused(Limits, f"Limits.{field}", **{field: 1.5})
    _refused(Limits, f"Limits.{field}", **{field: True})


@pytest.mark.parametrize("field", _FLOATS)
@pytest.mark.parametrize("value", [0, -1.0, math.inf, math.nan, "1"])
def test_every_interval_limit_refuses_zero_negative_and_non_finite(field: str, value: Any) -> None:
    _refused(Limits, f"Limits.{field}", **{field: value})


@pytest.mark.parametrize(
    ("smaller", "larger"),
    [
        ("default_ttl_seconds", "max_ttl_seconds"),
        ("min_ack_deadline_seconds", "default_ack_deadline_seconds"),
        ("default_ack_deadline_seconds", "max_ack_deadline_seconds"),
        ("default_agent_ttl_seconds", "max_agent_ttl_seconds"),
        ("max_context_chunk_bytes", "max_context_bytes"),
        ("reply_budget_bytes", "max_response_bytes"),
        ("max_packet_bytes", "max_request_bytes"),
    ],
)
def test_a_default_or_minimum_above_its_maximum_is_refused(smaller: str, larger: str) -> None:
    high = getattr(Limits(), larger)
    message = _refused(Limits, f"Limits.{smaller}", **{smaller: high + 1})
    assert f"Limits.{larger} ({high})" in message


def test_the_checks_cover_every_cap() -> None:
    assert sorted(_config_checks.CAPS) == sorted(_CAPS)


@pytest.mark.parametrize("field", _CAPS)
@pytest.mark.parametrize("value", [0, -1, 1_000_001, 2.0])
def test_every_stream_cap_and_pool_is_a_whole_number_from_1_to_a_million(
    field: str, value: Any
) -> None:
    _refused(ServerConfig, f"ServerConfig.{field}", **{field: value})


@pytest.mark.parametrize(("field", "value"), [*_TIMERS, ("keepalive_seconds", math.nan)])
def test_every_timer_refuses_what_would_stop_it_working(field: str, value: float) -> None:
    _refused(ServerConfig, f"ServerConfig.{field}", **{field: value})


def test_the_edges_of_each_range_are_taken() -> None:
    Limits(context_replaced_grace_seconds=0, policy_reload_seconds=0.001, max_batch_packets=1)
    ServerConfig(
        grace_seconds=0,
        drain_notice_seconds=0,
        keepalive_seconds=0.001,
        max_subscribers=1,
        max_watchers=1_000_000,
        retry_budget_seconds=0.01,
    )


async def test_a_config_changed_to_a_bad_value_never_reaches_start(redis_url: str) -> None:
    good = ServerConfig(listen="127.0.0.1:0", redis_url=redis_url)
    # dataclasses.replace makes a new one, checked as any other: an embedder cannot
    # start a server with a retry budget of 0 or no room for a subscriber.
    with pytest.raises(ValueError, match=r"ServerConfig\.retry_budget_seconds"):
        await start(dataclasses.replace(good, retry_budget_seconds=0))
    with pytest.raises(ValueError, match=r"ServerConfig\.max_subscribers"):
        await start(dataclasses.replace(good, max_subscribers=0))
    with pytest.raises(ValueError, match=r"Limits\.max_batch_packets"):
        await start(dataclasses.replace(good, limits=Limits(max_batch_packets=0)))
    with pytest.raises(ValueError, match=r"ServerConfig\.limits"):
        ServerConfig(limits={"max_batch_packets": 0})  # type: ignore[arg-type]
