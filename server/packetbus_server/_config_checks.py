"""What ServerConfig and Limits may hold: checked when either is made (their
__post_init__), so a server embedded from Python (packetbus_server.start) is held to
the same ranges as `packetbus serve`, whose flags argparse checks first with the
same bounds. A value out of range is a ValueError naming the field, the range and
the value: taken silently, a zero cap refuses every stream, a zero retry budget
fails every call a store hiccup touches, a default above its maximum refuses
requests that leave the field out.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._limits import Limits
    from ._server_config import ServerConfig

# The stream caps and connection pools, as `packetbus serve --max-...` takes them.
MAX_CAP = 1_000_000
# ServerConfig's caps on streams, connections and calls: each a whole number 1..MAX_CAP.
CAPS = (
    "max_subscribers",
    "max_watchers",
    "max_exports",
    "max_transfers",
    "max_dispatch_streams",
    "max_streams_per_peer",
    "max_redis_connections",
    "max_concurrent_rpcs",
)
# Timers in seconds, as `packetbus serve --keepalive` etc. take them: a day.
MAX_SECONDS = 86_400.0
# The Limits whose zero means "none" rather than "refuse everything".
_MAY_BE_ZERO = frozenset({"context_replaced_grace_seconds"})
# (smaller, larger): a Limits field that must not exceed another.
_ORDERED = (
    ("default_ttl_seconds", "max_ttl_seconds"),
    ("default_subscribe_batch_packets", "max_subscribe_batch_packets"),
    ("min_ack_deadline_seconds", "default_ack_deadline_seconds"),
    ("default_ack_deadline_seconds", "max_ack_deadline_seconds"),
    ("max_context_chunk_bytes", "max_context_bytes"),
    ("default_context_ttl_seconds", "max_context_ttl_seconds"),
    ("session_summary_ttl_seconds", "max_record_ttl_seconds"),
    ("swarm_registry_ttl_seconds", "max_record_ttl_seconds"),
    ("remediation_scan_ttl_seconds", "max_record_ttl_seconds"),
    ("min_agent_ttl_seconds", "default_agent_ttl_seconds"),
    ("default_agent_ttl_seconds", "max_agent_ttl_seconds"),
    ("default_agent_page", "max_agent_page"),
    ("max_packet_bytes", "max_request_bytes"),
    ("reply_budget_bytes", "max_response_bytes"),
)


def whole(name: str, value: object, low: int, high: int | None = None) -> None:
    """`value` is an int (not a bool) in low..high (no upper bound: None)."""
    if type(value) is not int:
        raise ValueError(f"{name} must be a whole number, not {value!r}")
    if value < low or (high is not None and value > high):
        span = f"{low}..{high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be {span}, not {value}")


def seconds(name: str, value: object, low: float, *, above: bool = False) -> None:
    """`value` is a finite number of seconds from `low` (exclusive when `above`) to a day."""
    if type(value) not in (int, float):
        raise ValueError(f"{name} must be a number of seconds, not {value!r}")
    number = float(value)  # type: ignore[arg-type]  # int or float, checked above
    too_low = number <= low if above else number < low
    if not math.isfinite(number) or too_low or number > MAX_SECONDS:
        least = f"more than {low:g}" if above else f"at least {low:g}"
        raise ValueError(
            f"{name} must be {least} and at most {MAX_SECONDS:g} seconds, not {value!r}"
        )


def check_limits(limits: Limits) -> None:
    """Raise ValueError naming the first field of `limits` out of range."""
    for field in dataclasses.fields(limits):
        name, value = f"Limits.{field.name}", getattr(limits, field.name)
        if field.type in ("float", float):
            seconds(name, value, 0.0, above=True)
        else:
            whole(name, value, 0 if field.name in _MAY_BE_ZERO else 1)
    for smaller, larger in _ORDERED:
        low, high = getattr(limits, smaller), getattr(limits, larger)
        if low > high:
            raise ValueError(f"Limits.{smaller} ({low}) must be at most Limits.{larger} ({high})")


def check_server_config(config: ServerConfig) -> None:
    """Raise ValueError naming the first field of `config` out of range (its
    Limits were checked when they were made)."""
    from ._limits import Limits

    if not isinstance(config.limits, Limits):
        raise ValueError(f"ServerConfig.limits must be a Limits, not {config.limits!r}")
    if not isinstance(config.listen, str) or not config.listen:
        raise ValueError(f"ServerConfig.listen must be HOST:PORT, not {config.listen!r}")
    seconds("ServerConfig.grace_seconds", config.grace_seconds, 0.0)
    seconds("ServerConfig.retry_budget_seconds", config.retry_budget_seconds, 0.0, above=True)
    seconds("ServerConfig.store_start_seconds", config.store_start_seconds, 0.0, above=True)
    seconds("ServerConfig.health_interval_seconds", config.health_interval_seconds, 0.0, above=True)
    seconds("ServerConfig.keepalive_seconds", config.keepalive_seconds, 0.001)
    seconds("ServerConfig.keepalive_timeout_seconds", config.keepalive_timeout_seconds, 0.001)
    seconds("ServerConfig.drain_notice_seconds", config.drain_notice_seconds, 0.0)
    for cap in CAPS:
        whole(f"ServerConfig.{cap}", getattr(config, cap), 1, MAX_CAP)
