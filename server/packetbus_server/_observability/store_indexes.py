"""How a /metrics scrape finds the store's topics and task queues without walking the
keyspace: from the indexes the server keeps (_keys.TOPICS, _keys.QUEUES), so a
scrape's cost follows the topics and queues it reads, not the packets stored (one
key per packet: pb:loc:{<tid>}; issue 15).

The rule that keeps an index whole: an index is trusted only while it holds the
member _keys.INDEX_COMPLETE. The server notes a topic in TOPICS when it dispatches
to it or creates a consumer group on it (and for governance writes), and a queue in
QUEUES when it posts a task to it (PacketStore.note_topics / note_queues: a pipeline
after the write's script). What no note covers - an index that expired (2 x the
packet retention after its last note; the member goes with it), a store an older
server version wrote, a store restored from an older dump - has no such member: the
scrape that finds it missing walks the keyspace once (SCAN; on a Redis Cluster, every
primary), adds every name it found (ZADD NX, score 0: outside every time range the
topic export reads) and the member, and later scrapes read the index alone. Left
uncovered: a server of a version before this one that creates a queue or group after
the backfill, on a topic or queue not noted otherwise (until the index expires).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from redis.cluster import RedisCluster

from .. import _keys
from .._replies import text

Store = redis.Redis | RedisCluster

# (key suffix, Redis type) of the keys a name in the index stands for.
TOPIC_KEYS = ((":groups", "hash"), (":carcel", "stream"))
QUEUE_KEYS = ((":tasks", "zset"),)

_BACKFILL_CHUNK = 1000


def indexed_names(
    r: Store, index: str, kinds: Sequence[tuple[str, str]], most: int
) -> tuple[list[str], bool]:
    """Up to `most` names in `index` (TOPICS or QUEUES), oldest noted first, and
    whether more were left unread. When the index is not known whole (no
    INDEX_COMPLETE), it is backfilled first from one SCAN per `kinds` (suffix, type)
    over the keyspace. Raises redis.RedisError when the store cannot be read."""
    # INDEX_COMPLETE's score is -inf: when present it comes first.
    found: Any = r.zrange(index, 0, most + 1)
    members = [text(m) for m in found]
    if members[:1] != [_keys.INDEX_COMPLETE]:
        _backfill(r, index, kinds)
        found = r.zrange(index, 0, most + 1)
        members = [text(m) for m in found]
    names = [m for m in members if m != _keys.INDEX_COMPLETE]
    return names[:most], len(names) > most


def _backfill(r: Store, index: str, kinds: Sequence[tuple[str, str]]) -> None:
    names: set[str] = set()
    for suffix, kind in kinds:
        for key in r.scan_iter(match=f"{_keys.PREFIX}:{{*}}{suffix}", count=1000, _type=kind):
            names.add(tag(key, suffix))
    ordered = sorted(names)
    for start in range(0, len(ordered), _BACKFILL_CHUNK):
        r.zadd(index, dict.fromkeys(ordered[start : start + _BACKFILL_CHUNK], 0), nx=True)
    # Last: the member says every name found before it is in.
    r.zadd(index, {_keys.INDEX_COMPLETE: float("-inf")}, nx=True)


def existing(r: Store, keys: Sequence[str]) -> list[str]:
    """Those of `keys` that exist, sorted: one pipeline (on a cluster, one per node)."""
    if not keys:
        return []
    pipe = r.pipeline(transaction=False)
    for key in keys:
        pipe.exists(key)
    return sorted(k for k, n in zip(keys, pipe.execute(), strict=True) if n)


def tag(key: bytes | str, suffix: str) -> str:
    """The hash tag of a key pb:{<tag>}<suffix> (the topic or queue name)."""
    return text(key)[len(_keys.PREFIX) + 2 : -len(suffix) - 1]
