"""Pages of the global context map and of memory logs and traces, each ending at the
reply budget: the map holds up to 10,000 values of 64 KiB, a log 1,000 entries of
64 KiB, far more than one reply.

A map page's token is the last key returned (keys come in order). A log page's token
is "<offset>:<entry id>" of the last entry returned: appends (at the head of a
memory log) and trims (at the head of a trace) move offsets, so the next page looks
for that entry near its offset, and through the whole log if it moved further.
"""

from __future__ import annotations

import re

from ._context_store import ContextStore
from ._packing import ITEM_OVERHEAD
from ._validation import Violation

# How far an entry may have moved since the last page and still be found at once.
_WINDOW = 64
# Entries read at a time.
_CHUNK = 100
_LOG_TOKEN = re.compile(r"([0-9]{1,10}):([0-9a-f-]{36})\Z")
_MAX_KEY_TOKEN = 1024


def _bad_token(violations: list[Violation]) -> None:
    violations.append(
        Violation("page_token", "PAGE_TOKEN", "is not a token from a previous response")
    )


def map_token(violations: list[Violation], token: str) -> str:
    """The key after which a page of the map starts ("": from the first)."""
    if len(token) > _MAX_KEY_TOKEN:
        _bad_token(violations)
    return token


def log_token(violations: list[Violation], token: str) -> tuple[int, str] | None:
    """The (offset, entry id) after which a page of a log starts (None: the first)."""
    if not token:
        return None
    match = _LOG_TOKEN.match(token)
    if match is None:
        _bad_token(violations)
        return None
    return int(match[1]), match[2]


async def map_page(store: ContextStore, after: str, budget: int) -> tuple[dict[str, str], str]:
    """The map's keys after `after`, in order, with their values, as many as fit in
    `budget` bytes (at least one); and the next page's token ("" when done)."""
    keys = sorted(k for k in await store.map_keys() if k > after)
    out: dict[str, str] = {}
    total = 0
    for offset in range(0, len(keys), _CHUNK):
        chunk = keys[offset : offset + _CHUNK]
        for key, value in zip(chunk, await store.map_values(chunk), strict=True):
            if value is None:  # deleted since
                continue
            # A map entry is a message of its key and value.
            total += len(key.encode()) + len(value.encode()) + 2 * ITEM_OVERHEAD
            if out and total > budget:
                return out, max(out)
            out[key] = value
    return out, ""


async def _find(store: ContextStore, key: str, index: int, entry_id: str) -> int | None:
    """Where entry `entry_id`, last seen at offset `index`, is now (None: gone)."""
    # Usually nothing moved since the last page: one entry read, not a window.
    here = await store.log_slice(key, index, index)
    if here and here[0][0] == entry_id:
        return index
    low = max(0, index - _WINDOW)
    near = await store.log_slice(key, low, index + _WINDOW)
    ids = [i for i, _ in near]
    if entry_id in ids:
        return low + ids.index(entry_id)
    low = 0
    while rows := await store.log_slice(key, low, low + _CHUNK * 4 - 1):
        ids = [i for i, _ in rows]
        if entry_id in ids:
            return low + ids.index(entry_id)
        low += len(rows)
    return None


async def log_page(
    store: ContextStore,
    key: str,
    after: tuple[int, str] | None,
    limit: int,
    *,
    newest_first: bool,
    budget: int,
) -> tuple[list[bytes], str]:
    """Up to `limit` entries (0: no limit) of log `key` after entry `after`, as many as
    fit in `budget` bytes (at least one); and the next page's token ("" when done)."""
    start = 0
    if after is not None:
        found = await _find(store, key, *after)
        if found is not None:
            start = found + 1
        elif newest_first:
            return [], ""  # trimmed away, and everything older with it
        # (oldest first: trimmed away, so every entry left came after it)
    out: list[bytes] = []
    total = 0
    index = start
    last = ""
    while not limit or len(out) < limit:
        count = _CHUNK if not limit else min(_CHUNK, limit - len(out))
        rows = await store.log_slice(key, index, index + count - 1)
        if not rows:
            return out, ""
        for entry_id, entry in rows:
            total += len(entry) + ITEM_OVERHEAD
            if out and total > budget:
                return out, f"{index - 1}:{last}"
            out.append(entry)
            last = entry_id
            index += 1
    more = await store.log_slice(key, index, index)
    return out, f"{index - 1}:{last}" if more else ""
