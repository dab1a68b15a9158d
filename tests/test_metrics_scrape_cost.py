"""Issue 15: what a /metrics scrape asks of the store does not grow with the packets
stored. Counted as the store counts it (INFO commandstats deltas) on a Valkey of the
test's own, which only the scrape talks to while it is measured (the server that
wrote the store is stopped first, so its background reads do not mix in)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import packetbus
from packetbus_server import ServerConfig, _keys, start
from packetbus_server._observability.store_metrics import StoreCollector
from tests._own_store import own_store
from tests.conftest import new_packet

POLICY = """
default = "allow"

[[rules]]
id = "no-blocked"
decision = "reject"
reason = "blocked topics take nothing"
topic = "blocked.*"
"""

TOPIC, QUEUE, BLOCKED = "cost.topic", "cost.queue", "blocked.cost"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@asynccontextmanager
async def _client(url: str, tmp_path: Path) -> AsyncIterator[packetbus.Client]:
    """A server on the store at `url`, stopped on leaving (so it reads nothing more)."""
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    srv = await start(
        ServerConfig(
            listen="127.0.0.1:0",
            redis_url=url,
            data_dir=tmp_path / "data",
            policy_file=policy,
        )
    )
    try:
        async with await packetbus.Client.connect(f"127.0.0.1:{srv.port}") as bus:
            yield bus
    finally:
        await srv.stop(grace=0)


async def _dispatch(bus: packetbus.Client, n: int) -> None:
    for start_at in range(0, n, 1000):
        batch = [new_packet(TOPIC) for _ in range(min(1000, n - start_at))]
        results = await bus.dispatch_batch(batch)
        assert {r.WhichOneof("outcome") for r in results} == {"receipt"}


def _calls(r: redis.Redis) -> dict[str, int]:
    stats: dict[str, Any] = r.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(s["calls"])
        for name, s in stats.items()
        if name != "cmdstat_info"
    }


@contextmanager
def _counted(url: str, into: dict[str, int]) -> Iterator[None]:
    """Fills `into` with the commands (name -> calls) the store ran within."""
    with redis.Redis.from_url(url) as r:
        before = _calls(r)
        yield
        after = _calls(r)
    into.update({c: n - before.get(c, 0) for c, n in after.items() if n != before.get(c, 0)})


def _scrape(url: str) -> Samples:
    collector = StoreCollector(url)
    registry = CollectorRegistry()
    registry.register(collector)
    try:
        text = generate_latest(registry).decode()
    finally:
        collector.close()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name != "packetbus_store_used_memory_bytes"
    }


def _expected(lag: int) -> Samples:
    def one(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
        return (name, frozenset(labels.items()))

    samples = {
        one("packetbus_store_up"): 1.0,
        one("packetbus_group_outstanding_leases", group="g"): 0.0,
        one("packetbus_group_consumers", group="g"): 0.0,
        one("packetbus_group_lag", group="g"): float(lag),
        one("packetbus_task_queue_tasks", queue=QUEUE, status="queued"): 2.0,
        one("packetbus_carcel_packets", reason="policy"): 1.0,
        one("packetbus_agents", liveness="live"): 0.0,
        one("packetbus_agents", liveness="stale"): 0.0,
    }
    for status in ("claimed", "completed", "carceled"):
        samples[one("packetbus_task_queue_tasks", queue=QUEUE, status=status)] = 0.0
    for reason in ("max_delivery_attempts", "max_attempts"):
        samples[one("packetbus_carcel_packets", reason=reason)] = 0.0
    for what in ("groups", "queues", "carcels", "agents"):
        samples[one("packetbus_store_scrape_truncated", what=what)] = 0.0
    return samples


async def _small_workload(bus: packetbus.Client) -> None:
    """A group, 10 packets, 2 tasks, 1 packet in a carcel (a policy rejected it)."""
    await bus.create_consumer_group(TOPIC, "g", start=packetbus.EARLIEST)
    await _dispatch(bus, 10)
    tasks = bus.task_queue(QUEUE)
    await tasks.post(packetbus.Task(id="t-1", description="do it"), origin="planner")
    await tasks.post(packetbus.Task(id="t-2", description="later"), origin="planner")
    [rejected] = await bus.dispatch_batch([new_packet(BLOCKED)])
    assert rejected.WhichOneof("outcome") == "error"


async def test_a_scrape_asks_the_same_of_the_store_for_10_packets_and_for_20010(
    tmp_path: Path,
) -> None:
    with own_store(tmp_path / "store") as url:
        async with _client(url, tmp_path) as bus:
            await _small_workload(bus)
        _scrape(url)  # the first scrape of a store may backfill the indexes
        few: dict[str, int] = {}
        with _counted(url, few):
            assert _scrape(url) == _expected(lag=10)

        async with _client(url, tmp_path) as bus:
            await _dispatch(bus, 20_000)
        many: dict[str, int] = {}
        with _counted(url, many):
            assert _scrape(url) == _expected(lag=20_010)

        with redis.Redis.from_url(url) as r:
            assert r.dbsize() > 20_000  # a key per packet at least (pb:loc:{<tid>})
    assert many == few
    assert "scan" not in few
    # The groups, queues and carcels read: found from the indexes, one pipelined
    # type check per indexed name (2 topics, 1 queue; carcels on all 3), and the
    # queue's count script checks its task index's type once more.
    assert few["type"] == 2 + 1 + 3 + 1
    assert "exists" not in few


async def test_a_store_whose_indexes_are_missing_is_scanned_once_and_reads_the_same(
    tmp_path: Path,
) -> None:
    with own_store(tmp_path / "store") as url:
        async with _client(url, tmp_path) as bus:
            await _small_workload(bus)
        # As an older server's store, or one whose indexes expired: no index at all.
        with redis.Redis.from_url(url) as r:
            assert r.delete(_keys.TOPICS, _keys.QUEUES) == 2
        first: dict[str, int] = {}
        with _counted(url, first):
            assert _scrape(url) == _expected(lag=10)
        second: dict[str, int] = {}
        with _counted(url, second):
            assert _scrape(url) == _expected(lag=10)
        with redis.Redis.from_url(url) as r:
            queues = [m.decode() for m in r.zrange(_keys.QUEUES, 0, -1)]
            topics = sorted(m.decode() for m in r.zrange(_keys.TOPICS, 0, -1))
    # Topic logs, groups, carcels, queues: a walk each (the store is small: one SCAN
    # call each). The logs' walk is ListTopics' part of the one backfill both read by.
    assert first["scan"] == 4
    assert "scan" not in second
    assert queues == [_keys.INDEX_COMPLETE, QUEUE]
    assert topics == [_keys.INDEX_COMPLETE, BLOCKED, TOPIC]


async def test_a_group_and_a_queue_made_after_the_backfill_are_found_without_a_scan(
    tmp_path: Path,
) -> None:
    with own_store(tmp_path / "store") as url:
        async with _client(url, tmp_path):
            pass
        _scrape(url)  # backfills the indexes of an empty store: complete from here on
        async with _client(url, tmp_path) as bus:
            # A group on a topic never dispatched to, a queue: noted by their own calls.
            await bus.create_consumer_group(TOPIC, "g", start=packetbus.EARLIEST)
            tasks = bus.task_queue(QUEUE)
            await tasks.post(packetbus.Task(id="t-1", description="do it"), origin="planner")
        counted: dict[str, int] = {}
        with _counted(url, counted):
            samples = _scrape(url)
    assert "scan" not in counted
    assert samples[("packetbus_group_lag", frozenset({("group", "g")}))] == 0.0
    queued = frozenset({("queue", QUEUE), ("status", "queued")})
    assert samples[("packetbus_task_queue_tasks", queued)] == 1.0
