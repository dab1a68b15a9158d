"""Redis replies as Python values (redis-py returns bytes, or str under RESP3 decoding)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def pairs(flat: Sequence[Any]) -> dict[str, int]:
    """A script's flat reply (name, count, name, count...) as a dict."""
    return {text(flat[j]): int(flat[j + 1]) for j in range(0, len(flat), 2)}
