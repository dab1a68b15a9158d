"""Redis replies as Python values (redis-py returns bytes, or str under RESP3 decoding)."""

from __future__ import annotations


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
