"""Gauges read from the store when /metrics is scraped: what every replica would
answer alike (group lag and outstanding leases, task queues by status, agents by
liveness, the carcel by reason, the store's memory).

The endpoint registers one `StoreCollector` per process that serves /metrics. A
scrape never fails because of the store: when it cannot be read in time,
`packetbus_store_up` is 0 and no other store gauge is given.

What one scrape reads is bounded (`Bounds`): at most so many consumer groups, task
queues, carcels and agents, and so many tasks per queue and carcel entries per
carcel classified. What lies beyond a bound is not read, and
`packetbus_store_scrape_truncated{what}` is 1 for it (task queues beyond the
bound: their tasks are not counted; tasks and carcel entries beyond theirs are
counted under status / reason "unclassified"). Groups, queues and carcels are
found from the topic and queue indexes (store_indexes; the rule that keeps them
whole, which ListTopics and ListTaskQueues share, is in .._name_index), at most `Bounds.names` names of each, so a scrape costs commands
in proportion to the topics, queues, groups, carcels and agents it reads, whatever
the number of packets stored; beyond `names`, the groups, carcels (topics) and
queues (queues) left unread are reported truncated.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from redis.cluster import RedisCluster

from .. import _keys
from .._agent_states import is_live
from .._replies import name, names, pairs
from .store_indexes import QUEUE_KEYS, TOPIC_KEYS, existing, indexed_names, tag

log = logging.getLogger(__name__)

# Carcel reasons as the scripts write them (settle.lua, lib/tasks.lua), and the
# policy's entries (metrics_carcel.lua): a closed set of labels.
_CARCEL_REASONS = {
    "max delivery attempts": "max_delivery_attempts",
    "max attempts": "max_attempts",
    "policy": "policy",
}
# Task statuses as lib/tasks.lua writes them.
_TASK_STATUSES = ("queued", "claimed", "completed", "carceled")
UNCLASSIFIED = "unclassified"


def _script(name: str) -> str:
    return resources.files("packetbus_server").joinpath("scripts", f"{name}.lua").read_text()


# Shared with ListTaskQueues (_task_queues), which passes the clock as well.
_QUEUE_SCRIPT = _script("queue_counts")
_CARCEL_SCRIPT = _script("metrics_carcel")


@dataclass(frozen=True, slots=True)
class Bounds:
    """The most one scrape reads: consumer groups, task queues, carcels, agents,
    tasks classified per queue, carcel entries classified per carcel, names read
    from each of the topic and queue indexes; and the store's socket timeout
    (seconds) for each command."""

    groups: int = 1000
    queues: int = 1000
    carcels: int = 1000
    agents: int = 10_000
    tasks_per_queue: int = 10_000
    entries_per_carcel: int = 1000
    names: int = 10_000
    timeout_seconds: float = 2.0


class StoreCollector(Collector):
    """Reads the store at `redis_url` on each scrape; `embedded`: the store is the
    server's own embedded Valkey (its memory is then reported as such)."""

    def __init__(self, redis_url: str, *, embedded: bool = False) -> None:
        self.redis_url = redis_url
        self.embedded = embedded
        self.bounds = Bounds()
        self._client: redis.Redis | RedisCluster | None = None

    def describe(self) -> Iterable[Metric]:
        # Given, so registering the collector reads nothing from the store.
        return [family for family in _families().values()]

    def collect(self) -> Iterable[Metric]:
        families = _families()
        try:
            self._read(families)
        except (redis.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
            log.warning("metrics: the store could not be read: %s", exc)
            self._forget()
            down = GaugeMetricFamily(*_UP)
            down.add_metric([], 0)
            return [down]
        families["up"].add_metric([], 1)
        return list(families.values())

    def close(self) -> None:
        self._forget()

    def _forget(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _redis(self) -> redis.Redis | RedisCluster:
        if self._client is None:
            common: dict[str, Any] = {
                "socket_timeout": self.bounds.timeout_seconds,
                "socket_connect_timeout": self.bounds.timeout_seconds,
            }
            single = redis.Redis.from_url(self.redis_url, **common)
            try:
                cluster = single.info("cluster").get("cluster_enabled") == 1
            except BaseException:
                single.close()
                raise
            if cluster:
                single.close()
                self._client = RedisCluster.from_url(self.redis_url, **common)
            else:
                self._client = single
        return self._client

    def _read(self, families: dict[str, GaugeMetricFamily]) -> None:
        r = self._redis()
        reply: Any = r.time()
        if isinstance(reply, dict):  # a cluster client may answer per node: any will do
            reply = next(iter(reply.values()))
        seconds, micros = reply
        now_ms = int(seconds) * 1000 + int(micros) // 1000  # the store's clock (_clock)
        topics, topics_cut = indexed_names(r, _keys.TOPICS, TOPIC_KEYS, self.bounds.names)
        queues, queues_cut = indexed_names(r, _keys.QUEUES, QUEUE_KEYS, self.bounds.names)
        truncated = {
            "groups": self._groups(r, families, topics) or topics_cut,
            "queues": self._queues(r, families, queues) or queues_cut,
            "carcels": self._carcels(r, families, sorted({*topics, *queues}))
            or topics_cut
            or queues_cut,
            "agents": self._agents(r, families, now_ms),
        }
        for what, cut in truncated.items():
            families["truncated"].add_metric([what], int(cut))
        self._memory(r, families)

    def _groups(
        self,
        r: redis.Redis | RedisCluster,
        families: dict[str, GaugeMetricFamily],
        topics: list[str],
    ) -> bool:
        keys = existing(r, [_keys.topic_groups(t) for t in topics], "hash")[
            : self.bounds.groups + 1
        ]
        outstanding: dict[str, int] = defaultdict(int)
        lag: dict[str, int] = defaultdict(int)
        consumers: dict[str, int] = defaultdict(int)
        seen = 0
        for key in keys:
            topic = tag(key, ":groups")
            # A field that is not UTF-8 is no group a server made: left out (_replies).
            groups = [n for n in names(r.hkeys(key)) if ":" not in n]
            if not groups:
                continue
            try:
                info: list[dict[Any, Any]] = r.xinfo_groups(_keys.topic_log(topic))
            except redis.ResponseError:
                info = []  # the log is gone (expired): its groups hold nothing
            live = {n: g for g in info if (n := name(g["name"])) is not None}
            for group in groups:
                seen += 1
                if seen > self.bounds.groups:
                    break
                g = live.get(group, {})
                outstanding[group] += int(g.get("pending", 0))
                consumers[group] += int(g.get("consumers", 0))
                # XINFO's lag: entries not yet delivered to the group; None when
                # the store cannot tell (entries deleted or trimmed meanwhile).
                if g.get("lag") is not None or not g:
                    lag[group] += int(g.get("lag") or 0)
        for group in sorted(outstanding):
            families["outstanding"].add_metric([group], outstanding[group])
            families["consumers"].add_metric([group], consumers[group])
            if group in lag:
                families["lag"].add_metric([group], lag[group])
        return seen > self.bounds.groups or len(keys) > self.bounds.groups

    def _queues(
        self,
        r: redis.Redis | RedisCluster,
        families: dict[str, GaugeMetricFamily],
        queues: list[str],
    ) -> bool:
        keys = existing(r, [_keys.task_index(q) for q in queues], "zset")
        most = self.bounds.tasks_per_queue
        cut = len(keys) > self.bounds.queues
        for key in keys[: self.bounds.queues]:
            queue = tag(key, ":tasks")
            reply = r.eval(_QUEUE_SCRIPT, 1, key, _keys.queue_prefix(queue), most)
            total, counts = int(reply[0]), pairs(reply[1:])
            if total < 0:
                continue  # a task index of another type: not a queue (queue_counts.lua)
            for status in _TASK_STATUSES:
                families["tasks"].add_metric([queue, status], counts.pop(status, 0))
            if total > most:
                cut = True
                families["tasks"].add_metric([queue, UNCLASSIFIED], total - most)
        return cut

    def _carcels(
        self,
        r: redis.Redis | RedisCluster,
        families: dict[str, GaugeMetricFamily],
        names: list[str],
    ) -> bool:
        keys = existing(r, [_keys.carcel(n) for n in names], "stream")
        most = self.bounds.entries_per_carcel
        by_reason: dict[str, int] = dict.fromkeys(_CARCEL_REASONS.values(), 0)
        cut = len(keys) > self.bounds.carcels
        for key in keys[: self.bounds.carcels]:
            reply = r.eval(_CARCEL_SCRIPT, 1, key, most)
            # A reason that is not UTF-8 (a stray entry's) is some other reason.
            total, counts = int(reply[0]), pairs(reply[1:], stray="")
            for cause, n in counts.items():
                reason = _CARCEL_REASONS.get(cause, "other")
                by_reason[reason] = by_reason.get(reason, 0) + n
            if total > most:
                cut = True
                by_reason[UNCLASSIFIED] = by_reason.get(UNCLASSIFIED, 0) + total - most
        for reason, n in sorted(by_reason.items()):
            families["carcel"].add_metric([reason], n)
        return cut

    def _agents(
        self, r: redis.Redis | RedisCluster, families: dict[str, GaugeMetricFamily], now_ms: int
    ) -> bool:
        most = self.bounds.agents
        found: Any = r.zrange(_keys.AGENT_IDS, 0, most)
        ids = names(found)  # an id that is not UTF-8 is no agent a server registered
        counts = {"live": 0, "stale": 0}
        # Every agent key is in the one slot {agents}: one pipeline, on a cluster too.
        pipe = r.pipeline(transaction=False)
        for agent_id in ids[:most]:
            pipe.hmget(_keys.agent(agent_id), "lv", "dl")
        for lv, dl in pipe.execute() if ids else []:
            if lv is None:
                continue  # removed between the two reads
            fields = {b"lv": bytes(lv), b"dl": bytes(dl or b"0")}
            counts["live" if is_live(fields, now_ms) else "stale"] += 1
        for liveness, n in counts.items():
            families["agents"].add_metric([liveness], n)
        return len(found) > most

    def _memory(
        self, r: redis.Redis | RedisCluster, families: dict[str, GaugeMetricFamily]
    ) -> None:
        store = "embedded" if self.embedded else "external"
        if isinstance(r, RedisCluster):
            found: dict[str, Any] = r.info("memory", target_nodes=RedisCluster.PRIMARIES)
            # One primary answers alone, several by node name.
            per_node = [found] if "used_memory" in found else list(found.values())
            used = sum(int(info["used_memory"]) for info in per_node)
        else:
            used = int(r.info("memory")["used_memory"])
        families["memory"].add_metric([store], used)


_UP = (
    "packetbus_store_up",
    "1 when this scrape read the store, 0 when it could not (the other store gauges are then absent).",
)


def _families() -> dict[str, GaugeMetricFamily]:
    """Fresh, empty metric families for one scrape."""
    return {
        "outstanding": GaugeMetricFamily(
            "packetbus_group_outstanding_leases",
            "Packets leased to a consumer group's consumers and not yet settled "
            "(groups of one name on several topics summed).",
            labels=["group"],
        ),
        "lag": GaugeMetricFamily(
            "packetbus_group_lag",
            "Packets in a group's topic log not yet delivered to the group "
            "(absent while the store cannot tell: entries trimmed under the group).",
            labels=["group"],
        ),
        "consumers": GaugeMetricFamily(
            "packetbus_group_consumers",
            "Consumers the store knows in a consumer group.",
            labels=["group"],
        ),
        "tasks": GaugeMetricFamily(
            "packetbus_task_queue_tasks",
            "Tasks in a queue by status: queued, claimed, completed, carceled "
            "(unclassified: beyond the tasks one scrape reads).",
            labels=["queue", "status"],
        ),
        "carcel": GaugeMetricFamily(
            "packetbus_carcel_packets",
            "Packets in the carcels (all topics and queues) by reason: "
            "max_delivery_attempts, max_attempts, policy, other "
            "(unclassified: beyond the entries one scrape reads).",
            labels=["reason"],
        ),
        "agents": GaugeMetricFamily(
            "packetbus_agents",
            "Registered agents by liveness (live, stale), as the registry judges it "
            "by the store's clock.",
            labels=["liveness"],
        ),
        "memory": GaugeMetricFamily(
            "packetbus_store_used_memory_bytes",
            "The store's memory in use (INFO used_memory; a cluster's primaries summed); "
            "store: embedded (the server's own Valkey) or external.",
            labels=["store"],
        ),
        "truncated": GaugeMetricFamily(
            "packetbus_store_scrape_truncated",
            "1 when this scrape left some of `what` unread (groups, queues, carcels, "
            "agents) because of its bounds.",
            labels=["what"],
        ),
        "up": GaugeMetricFamily(*_UP),
    }


def _names() -> Iterator[str]:
    """Every metric this collector can give (for the README's table test)."""
    for family in _families().values():
        yield family.name


METRIC_NAMES = tuple(_names())
