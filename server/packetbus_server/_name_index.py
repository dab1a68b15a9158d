"""The topic and task queue indexes (_keys.TOPICS, _keys.QUEUES): the rule that keeps
one whole, shared by its two readers, /metrics (_observability/store_indexes, a
blocking client in the scrape's thread) and ListTopics (_topic_listing, the
server's asyncio client). Neither walks the keyspace on each read: a read costs
in proportion to the names indexed, not to the packets stored (one key per packet:
pb:loc:{<tid>}; issue 15).

The rule: an index is trusted only while it holds the member _keys.INDEX_COMPLETE.
The server notes a topic in TOPICS when it dispatches to it or creates a consumer
group on it (and for governance writes), and a queue in QUEUES when it posts a task
to it (PacketStore.note_topics / note_queues: a pipeline after the write's script).
What no note covers - an index that expired (2 x the packet retention after its last
note; the member goes with it), a store an older server version wrote, a store
restored from an older dump - has no such member: the first reader that finds it
missing walks the keyspace once (`backfill_scans`: one SCAN per (suffix, type) of
`TOPIC_KEYS` or `QUEUE_KEYS`; on a Redis Cluster, every primary), adds every name it
found (ZADD NX, score 0: outside every time range the topic export reads) and the
member last, and later reads use the index alone. Those writes are tried once and
may fail (a full store's OOM, a read-only replica's READONLY): a listing is a read,
so it answers from the scan all the same and the next reader scans again. Left uncovered: a server of a
version before this one that creates a queue or group after the backfill, on a
topic or queue not noted otherwise (until the index expires).

Both readers backfill from the same `TOPIC_KEYS`: the member says the index is whole
for every reader, so the scan covers what each of them lists (a topic's log for
ListTopics, its groups and carcel for /metrics).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from redis.exceptions import RedisClusterException, RedisError

from . import _keys
from ._replies import text
from ._retry import with_retries
from ._scripts import RedisClient

log = logging.getLogger(__name__)

# (key suffix, Redis type) of the keys a name in the index stands for.
TOPIC_KEYS = ((":log", "stream"), (":groups", "hash"), (":carcel", "stream"))
QUEUE_KEYS = ((":tasks", "zset"),)

BACKFILL_CHUNK = 1000  # names per ZADD of a backfill
# What a backfill's writes may fail with and still leave the read its scan: a refusal
# or a lost connection (RedisClusterException, no node reached, is no RedisError; a
# timeout may come through as asyncio's own).
WRITE_REFUSED = (TimeoutError, RedisError, RedisClusterException, OSError)
_SCAN_COUNT = 1000


def scan_pattern(suffix: str) -> str:
    """The SCAN MATCH pattern of the keys pb:{<name>}<suffix>."""
    return f"{_keys.PREFIX}:{{*}}{suffix}"


def tag(key: bytes | str, suffix: str) -> str:
    """The hash tag of a key pb:{<tag>}<suffix> (the topic or queue name)."""
    return text(key)[len(_keys.PREFIX) + 2 : -len(suffix) - 1]


# The characters of a topic or queue name (_validation's rule): every name the
# server notes is one.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]*\Z")


def _name(value: bytes | str) -> str | None:
    """`value` as a name, or None when it cannot be one a server wrote (bytes that
    are not UTF-8, or a string outside the name rule)."""
    try:
        decoded = text(value)
    except UnicodeDecodeError:
        return None
    return decoded if _NAME.match(decoded) else None


def scanned_name(key: bytes | str, suffix: str) -> str | None:
    """The name a key pb:{<tag>}<suffix> that a SCAN found stands for; None for a
    foreign program's key whose tag is no name (not UTF-8 it failed every listing
    and scrape; the others would be listed as names no call takes)."""
    return _name(key[len(_keys.PREFIX) + 2 : -len(suffix) - 1])


def members(found: Iterable[bytes | str]) -> list[str]:
    """An index's members (ZRANGE, ZSCAN) as text, in their order; one that is not
    UTF-8 (no member a server wrote) as "" (not a name, not the marker)."""
    out = []
    for member in found:
        try:
            out.append(text(member))
        except UnicodeDecodeError:
            out.append("")
    return out


def is_complete(members: Sequence[str]) -> bool:
    """Whether an index's first members (ZRANGE from rank 0) say it is whole:
    INDEX_COMPLETE's score is -inf, so when present it comes first."""
    return members[:1] == [_keys.INDEX_COMPLETE]


def without_marker(members: Iterable[str]) -> list[str]:
    """The names among an index's members (INDEX_COMPLETE left out, and any member
    that is no name: only a foreign program could have written one)."""
    return [m for m in members if m != _keys.INDEX_COMPLETE and _NAME.match(m)]


def backfill_chunks(names: Iterable[str]) -> Iterator[dict[str, float]]:
    """The ZADD NX mappings (score 0) that add `names` to an index, in name order,
    at most BACKFILL_CHUNK names each; then the INDEX_COMPLETE member (score -inf)
    alone, last: it says every name found before it is in."""
    ordered = sorted(set(names))
    for start in range(0, len(ordered), BACKFILL_CHUNK):
        yield dict.fromkeys(ordered[start : start + BACKFILL_CHUNK], 0)
    yield {_keys.INDEX_COMPLETE: float("-inf")}


async def indexed_names(
    redis: RedisClient, index: str, kinds: Sequence[tuple[str, str]], *, budget_seconds: float
) -> list[str]:
    """Every name in `index` (TOPICS or QUEUES), in name order; when it is not known
    whole, with the names one SCAN per `kinds` (suffix, type) finds, which are
    written to it (best effort: a store refusing writes still answers). Read with
    ZSCAN, a slice at a time, so a large index does not block the store. Raises
    StoreUnavailableError when the store cannot be read within `budget_seconds`."""

    async def first() -> list[str]:
        found: Any = await redis.zrange(index, 0, 0)
        return members(found)

    scanned: set[str] = set()
    if not is_complete(await with_retries(first, budget_seconds=budget_seconds)):
        scanned = await with_retries(lambda: _scan(redis, kinds), budget_seconds=budget_seconds)
        await _record(redis, index, scanned)

    async def read() -> list[str]:
        names: set[str] = set()  # ZSCAN may return a member twice
        async for member, _score in redis.zscan_iter(index, count=_SCAN_COUNT):
            names.update(members([member]))
        return sorted(without_marker(names | scanned))

    names: list[str] = await with_retries(read, budget_seconds=budget_seconds)
    return names


async def _scan(redis: RedisClient, kinds: Sequence[tuple[str, str]]) -> set[str]:
    names: set[str] = set()
    for suffix, kind in kinds:
        async for key in redis.scan_iter(match=scan_pattern(suffix), count=_SCAN_COUNT, _type=kind):
            name = scanned_name(key, suffix)
            if name is not None:
                names.add(name)
    return names


async def _record(redis: RedisClient, index: str, names: set[str]) -> None:
    """Add the scanned `names` to `index`, then mark it whole: one try, no retries.
    The caller lists from the scan whatever happens here, so a store that refuses
    writes (full: OOM; a read-only replica: READONLY) or a lost reply costs a read
    nothing; the mark goes last, so an index left part-written stays unmarked and
    the next reader scans again (ZADD NX: adding a name twice is harmless)."""
    try:
        for mapping in backfill_chunks(names):
            await redis.zadd(index, mapping, nx=True)
    except WRITE_REFUSED as exc:
        log.info("index %s not backfilled (listed from the scan alone): %s", index, exc)


async def existing(redis: RedisClient, keys: Sequence[str], kind: str) -> list[str]:
    """Those of `keys` that exist as Redis type `kind` ("zset", ...), sorted: one
    pipeline of TYPE (on a cluster, one per node); a key of another type is not one
    this server wrote and is left out. Raises redis.RedisError as the pipeline does
    (callers retry it)."""
    if not keys:
        return []
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.type(key)
    return of_kind(keys, await pipe.execute(), kind)


def of_kind(keys: Sequence[str], types: Sequence[Any], kind: str) -> list[str]:
    """Those of `keys` whose TYPE reply (in `types`, the same order) is `kind`, sorted."""
    return sorted(k for k, t in zip(keys, types, strict=True) if text(t) == kind)
