"""How the store's topics and task queues are found without walking the keyspace:
from the indexes the server keeps (_keys.TOPICS, _keys.QUEUES), so the cost of a
/metrics scrape or a ListTaskQueues call follows the topics and queues it reads, not
the packets stored (one key per packet: pb:loc:{<tid>}; issue 15). Both use this
module: the scrape (_observability/store_metrics.py) with a blocking client
(`indexed_names`, `existing`), ListTaskQueues (_task_queues.py) with the server's
asyncio client (`indexed_names_async`, `existing_async`).

The rule that keeps an index whole: an index is trusted only while it holds the
member _keys.INDEX_COMPLETE. The server notes a topic in TOPICS when it dispatches
to it or creates a consumer group on it (and for governance writes), and a queue in
QUEUES when it posts a task to it (PacketStore.note_topics / note_queues: a pipeline
after the write's script). What no note covers - an index that expired (2 x the
packet retention after its last note; the member goes with it), a store an older
server version wrote, a store restored from an older dump - has no such member: the
reader that finds it missing walks the keyspace once (SCAN; on a Redis Cluster, every
primary), adds every name it found (ZADD NX, score 0: outside every time range the
topic export reads) and the member, and later reads use the index alone. Left
uncovered: a server of a version before this one that creates a queue or group after
the backfill, on a topic or queue not noted otherwise (until the index expires).

The backfill's writes only complete an index (ZADD NX of names that are there): a
reader whose store refuses them (full, a read-only replica) answers from the names
its SCAN found all the same, and the next reader tries the writes again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from . import _keys
from ._replies import text

Store = redis.Redis | RedisCluster
AsyncStore = AsyncRedis | AsyncRedisCluster

# (key suffix, Redis type) of the keys a name in the index stands for.
TOPIC_KEYS = ((":groups", "hash"), (":carcel", "stream"))
QUEUE_KEYS = ((":tasks", "zset"),)

_BACKFILL_CHUNK = 1000


def _names(found: Any, most: int) -> tuple[list[str], bool, bool]:
    """(names, more left unread, index known whole) from ZRANGE 0 most+1."""
    members = [text(m) for m in found]
    # INDEX_COMPLETE's score is -inf: when present it comes first.
    whole = members[:1] == [_keys.INDEX_COMPLETE]
    names = [m for m in members if m != _keys.INDEX_COMPLETE]
    return names[:most], len(names) > most, whole


def _pattern(suffix: str) -> str:
    return f"{_keys.PREFIX}:{{*}}{suffix}"


def _chunks(names: set[str]) -> list[dict[str, float]]:
    ordered = sorted(names)
    return [
        dict.fromkeys(ordered[start : start + _BACKFILL_CHUNK], 0)
        for start in range(0, len(ordered), _BACKFILL_CHUNK)
    ]


def indexed_names(
    r: Store, index: str, kinds: Sequence[tuple[str, str]], most: int
) -> tuple[list[str], bool]:
    """Up to `most` names in `index` (TOPICS or QUEUES), oldest noted first, and
    whether more were left unread. When the index is not known whole (no
    INDEX_COMPLETE), it is backfilled first from one SCAN per `kinds` (suffix, type)
    over the keyspace. Raises redis.RedisError when the store cannot be read."""
    names, more, whole = _names(r.zrange(index, 0, most + 1), most)
    if whole:
        return names, more
    found: set[str] = set()
    for suffix, kind in kinds:
        for key in r.scan_iter(match=_pattern(suffix), count=1000, _type=kind):
            found.add(tag(key, suffix))
    for chunk in _chunks(found):
        r.zadd(index, chunk, nx=True)
    # Last: the member says every name found before it is in.
    r.zadd(index, {_keys.INDEX_COMPLETE: float("-inf")}, nx=True)
    names, more, _ = _names(r.zrange(index, 0, most + 1), most)
    return names, more


async def indexed_names_async(
    r: AsyncStore, index: str, kinds: Sequence[tuple[str, str]], most: int
) -> tuple[list[str], bool]:
    """`indexed_names` with the server's asyncio client; a backfill whose writes the
    store refuses answers the names in the index and those its SCAN found (the most
    `most`, sorted: no order of noting is known for them)."""
    names, more, whole = _names(await r.zrange(index, 0, most + 1), most)
    if whole:
        return names, more
    found: set[str] = set()
    for suffix, kind in kinds:
        async for key in r.scan_iter(match=_pattern(suffix), count=1000, _type=kind):
            found.add(tag(key, suffix))
    try:
        for chunk in _chunks(found):
            await r.zadd(index, chunk, nx=True)
        await r.zadd(index, {_keys.INDEX_COMPLETE: float("-inf")}, nx=True)
    except redis.ResponseError:  # refused (OOM, READONLY...): answer without the index
        merged = sorted({*names, *found})
        return merged[:most], len(merged) > most or more
    names, more, _ = _names(await r.zrange(index, 0, most + 1), most)
    return names, more


def existing(r: Store, keys: Sequence[str]) -> list[str]:
    """Those of `keys` that exist, sorted: one pipeline (on a cluster, one per node)."""
    if not keys:
        return []
    pipe = r.pipeline(transaction=False)
    for key in keys:
        pipe.exists(key)
    return sorted(k for k, n in zip(keys, pipe.execute(), strict=True) if n)


async def existing_async(r: AsyncStore, keys: Sequence[str]) -> list[str]:
    """`existing` with the server's asyncio client."""
    if not keys:
        return []
    pipe = r.pipeline(transaction=False)
    for key in keys:
        pipe.exists(key)
    return sorted(k for k, n in zip(keys, await pipe.execute(), strict=True) if n)


def tag(key: bytes | str, suffix: str) -> str:
    """The hash tag of a key pb:{<tag>}<suffix> (the topic or queue name)."""
    return text(key)[len(_keys.PREFIX) + 2 : -len(suffix) - 1]


def pairs(flat: Sequence[Any]) -> dict[str, int]:
    """A script's flat reply (key, count, key, count...) as a dict."""
    return {text(flat[j]): int(flat[j + 1]) for j in range(0, len(flat), 2)}
