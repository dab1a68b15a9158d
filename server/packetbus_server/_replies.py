"""Redis replies as Python values (redis-py returns bytes, or str under RESP3 decoding)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def name(value: bytes | str) -> str | None:
    """A name read from the store (a key's tag, a hash field, a set member, a
    group, a reason) as text; None when it is not UTF-8. Every name a server writes
    is, so such a one is a stray (a foreign program's, a restore gone wrong): the
    listings and the scrape leave it out rather than fail on it, as the topic and
    queue indexes do (_name_index)."""
    try:
        return text(value)
    except UnicodeDecodeError:
        return None


def names(values: Iterable[bytes | str]) -> list[str]:
    """The names among `values` (see `name`), in their order."""
    return [n for n in map(name, values) if n is not None]


def pairs(flat: Sequence[Any], *, stray: str | None = None) -> dict[str, int]:
    """A script's flat reply (name, count, name, count...) as a dict. A name that is
    not UTF-8 (see `name`) is counted under `stray`, or left out when it is None."""
    out: dict[str, int] = {}
    for j in range(0, len(flat), 2):
        key = name(flat[j])
        if key is None:
            if stray is None:
                continue
            key = stray
        out[key] = out.get(key, 0) + int(flat[j + 1])
    return out
