"""What a test may claim about writes to a store that other tests share.

A shared store (the machine's Redis, a session's Valkey) has keys expiring while
a test runs, so a count of keys before and after can fall and hide a write, or
fail for nothing. A write that must not happen creates a key; the names that are
there after and were not there before are what a "nothing written" test checks.
"""

from __future__ import annotations

from typing import Any


async def key_names(r: Any) -> set[bytes]:
    """Every key name in `r`'s database (all primaries for a RedisCluster client).

    Shape: a set of raw key names. Cost: one SCAN pass, about 10 ms per 10k keys.
    """
    return {name async for name in r.scan_iter(count=5000)}


async def new_keys(r: Any, before: set[bytes]) -> set[bytes]:
    """The key names in `r` now that were not in `before` (from `key_names`)."""
    return await key_names(r) - before
