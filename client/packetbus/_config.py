"""Client settings: frozen, keyword-only, with defaults that suit most agents."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

DEFAULT_TARGET = "127.0.0.1:50051"
TARGET_ENV = "PACKETBUS_TARGET"


def default_target() -> str:
    return os.environ.get(TARGET_ENV) or DEFAULT_TARGET


@dataclass(frozen=True, kw_only=True)
class BatchSettings:
    """How `Client.dispatch` groups packets into Dispatch calls.

    A batch is sent when it holds `max_packets` packets or `max_bytes` bytes,
    or `max_latency` seconds after its first packet, whichever comes first.
    Flow control: once `max_outstanding_packets` or `max_outstanding_bytes` are
    waiting or in flight, `dispatch` waits for room instead of buffering more.
    """

    max_packets: int = 500
    max_bytes: int = 4 * 1024 * 1024
    max_latency: float = 0.005
    max_concurrent_batches: int = 4
    max_outstanding_packets: int = 20_000
    max_outstanding_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class RetrySettings:
    """Backoff for retrying UNAVAILABLE (safe: dispatch is idempotent).

    Unary calls retry until their timeout is spent. A subscription reconnects,
    resuming after its last cursor, until it has failed to reach the server for
    `reconnect_window` seconds in a row.
    """

    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0
    reconnect_window: float = 60.0


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    target: str = field(default_factory=default_target)
    # Used by calls that are not given timeout=.
    default_timeout: float = 30.0
    batching: BatchSettings = field(default_factory=BatchSettings)
    retry: RetrySettings = field(default_factory=RetrySettings)
    max_message_bytes: int = 16 * 1024 * 1024
