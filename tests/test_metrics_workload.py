"""Issue 15's first acceptance point: after a scripted workload the metrics read
exactly what it did. Counters are compared as deltas over the workload (the
default registry is per process, shared with every other test here); gauges are
read from a store of the server's own, so they are exact.

The metrics are read in-process (`_read`) until the /metrics endpoint lands;
scraping it instead changes that one function.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import packetbus
from packetbus.v1 import agent_service_pb2
from packetbus_server import Limits, RunningServer, ServerConfig, start
from packetbus_server._observability.store_metrics import StoreCollector
from tests._cluster import start_cluster, stop_cluster
from tests._own_store import own_store
from tests._scrape import scrape_text
from tests.conftest import new_packet, unique

Sample = tuple[str, frozenset[tuple[str, str]]]

POLICY = """
default = "allow"

[[rules]]
id = "no-blocked"
decision = "reject"
reason = "blocked topics take nothing"
topic = "blocked.*"

[[rules]]
id = "gated"
decision = "hold"
reason = "a person looks first"
topic = "gated.*"
"""


def _parsed(exposition: str) -> dict[Sample, float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }


def _read(registry: CollectorRegistry) -> dict[Sample, float]:
    """Every sample the registry gives, by name and labels."""
    return _parsed(generate_latest(registry).decode())


async def _scrape(srv: RunningServer) -> dict[Sample, float]:
    """Every sample the server's /metrics endpoint answers, over HTTP (off the
    event loop: the server shares it)."""
    return _parsed(
        await asyncio.to_thread(scrape_text, f"http://127.0.0.1:{srv.metrics_port}/metrics")
    )


def _get(samples: dict[Sample, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@contextmanager
def _store_of_its_own(backend: str, tmp_path: Path) -> Iterator[str]:
    """A store only this test's server writes, so gauges over the whole store are exact."""
    if backend == "cluster":
        url, nodes = start_cluster(tmp_path / "cluster")
        try:
            yield url
        finally:
            stop_cluster(nodes)
    else:
        with own_store(tmp_path / "store") as url:
            yield url


@pytest.fixture
async def governed(backend: str, tmp_path: Path) -> AsyncIterator[RunningServer]:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    with _store_of_its_own(backend, tmp_path) as url:
        srv = await start(
            ServerConfig(
                listen="127.0.0.1:0",
                redis_url=url,
                data_dir=tmp_path / "data",
                limits=Limits(min_ack_deadline_seconds=1),
                policy_file=policy,
                metrics_listen="127.0.0.1:0",
            )
        )
        try:
            yield srv
        finally:
            await srv.stop(grace=0)


async def _consume_with_a_nack_and_a_carcel(
    bus: packetbus.Client, topic: str, poison: str, others: int
) -> None:
    """Ack every packet but `poison`, which is nacked until the carcel takes it."""
    acked = carceled = 0
    async with bus.consume(topic, "g", consumer="c1") as consumer:
        async with asyncio.timeout(20):
            async for delivery in consumer:
                if delivery.packet.packet.tracking_id == poison:
                    [result] = await delivery.nack(reason="cannot parse it")
                    carceled += bool(result.carcel_id)
                else:
                    await delivery.ack()
                    acked += 1
                if acked == others and carceled:
                    return


async def test_the_metrics_read_exactly_what_a_workload_did(governed: RunningServer) -> None:
    srv = governed
    # Scraped over HTTP, as Prometheus does; counters as deltas (the process's
    # counters are shared with other tests' servers), gauges exactly (a store of its own).
    before = await _scrape(srv)

    topic, queue = unique("metrics"), unique("queue")
    async with await packetbus.Client.connect(f"127.0.0.1:{srv.port}") as bus:
        await bus.create_consumer_group(
            topic, "g", start=packetbus.EARLIEST, ack_deadline_seconds=1, max_delivery_attempts=2
        )
        # 3 stored, 1 invalid (its TTL past the limit), 1 a policy rule rejects, 1 it holds.
        good = [new_packet(topic) for _ in range(3)]
        invalid = new_packet(topic, ttl_seconds=10**7)
        blocked = new_packet(unique("blocked"))
        gated = new_packet(unique("gated"))
        results = await bus.dispatch_batch([*good, invalid, blocked, gated])
        assert [r.WhichOneof("outcome") for r in results] == [
            *["receipt"] * 3,
            *["error"] * 2,
            "held",
        ]
        # A resend: answered with the original receipt, stored once.
        [again] = await bus.dispatch_batch([good[0]])
        assert again.receipt == results[0].receipt

        await _consume_with_a_nack_and_a_carcel(bus, topic, good[0].tracking_id, others=2)
        await bus.dispatch(new_packet(topic))  # not consumed: the group's lag

        tasks = bus.task_queue(queue)
        await tasks.post(packetbus.Task(id="t-1", description="do it"), origin="planner")
        await tasks.post(packetbus.Task(id="t-2", description="later"), origin="planner")
        claimed = await tasks.claim("worker-1", lease_seconds=30)
        assert claimed is not None
        assert claimed.task_id == "t-1"
        await claimed.complete({"answer": 42})

        await bus.register_agent(unique("alive"), ttl=60)
        silent = unique("silent")
        await bus.register_agent(silent, ttl=2)  # stale after 2 s, gone after 4 s
        # Past its deadline by the store's clock, as the registry judges it.
        await asyncio.sleep(2.05)
        assert (await bus.get_agent(silent)).liveness == agent_service_pb2.AGENT_LIVENESS_STALE

        after = await _scrape(srv)

    def delta(name: str, **labels: str) -> float:
        return _get(after, name, **labels) - _get(before, name, **labels)

    # --- counters: what the workload did ---
    assert delta("packetbus_packets_dispatched_total", kind="packet") == 4
    assert delta("packetbus_packets_dispatched_total", kind="task") == 2
    assert delta("packetbus_packets_rejected_total", reason="INVALID_ARGUMENT", rule="") == 1
    assert (
        delta("packetbus_packets_rejected_total", reason="POLICY_REJECTED", rule="no-blocked") == 1
    )
    assert delta("packetbus_packets_held_total", rule="gated") == 1
    assert delta("packetbus_packets_deduplicated_total") == 1
    assert delta("packetbus_packets_delivered_total", via="group") == 4  # 3, then 1 again
    assert delta("packetbus_packets_delivered_total", via="subscribe") == 0
    assert delta("packetbus_group_redeliveries_total", group="g") == 1
    assert delta("packetbus_group_carceled_total", group="g") == 1
    signed = {
        action: delta("packetbus_custody_entries_signed_total", action=action)
        for action in (
            "received",
            "dispatched",
            "rejected",
            "held",
            "delivered",
            "acked",
            "nacked",
            "carceled",
            "claimed",
            "completed",
        )
    }
    assert signed == {
        # 3 + the resend (signed before the store found it a resend) + 1 + 2 tasks,
        # and the rejected and the held packet's "received".
        "received": 9,
        "dispatched": 7,
        "rejected": 1,
        "held": 1,
        # 4 deliveries; the redelivery signed twice: signed first as if its packet
        # had no hops yet (the guess that saves a read on first deliveries), then
        # again after the hops the store answered with (_group_service._deliver).
        "delivered": 5,
        "acked": 2,
        "nacked": 1,
        "carceled": 1,
        "claimed": 1,
        "completed": 1,
    }
    assert delta("packetbus_stored_bytes_total") > 0
    # None: the store answered every time (the counter is the process's, so a delta).
    retries = {
        k: v - before.get(k, 0.0)
        for k, v in after.items()
        if k[0] == "packetbus_store_retries_total" and v != before.get(k, 0.0)
    }
    assert retries == {}
    # The first run of a script on a fresh store is EVALSHA, NOSCRIPT, then EVAL: two
    # round trips; three dispatches (the batch, the resend, one more) make four.
    assert delta("packetbus_store_round_trip_seconds_count", operation="dispatch") == 4

    # --- gauges: the store now ---
    assert _get(after, "packetbus_store_up") == 1
    assert _get(after, "packetbus_group_outstanding_leases", group="g") == 0
    assert _get(after, "packetbus_group_lag", group="g") == 1
    assert _get(after, "packetbus_group_consumers", group="g") == 1
    tasks_by_status = {
        status: _get(after, "packetbus_task_queue_tasks", queue=queue, status=status)
        for status in ("queued", "claimed", "completed", "carceled")
    }
    assert tasks_by_status == {"queued": 1, "claimed": 0, "completed": 1, "carceled": 0}
    carcel = {
        reason: _get(after, "packetbus_carcel_packets", reason=reason)
        for reason in ("max_delivery_attempts", "max_attempts", "policy", "other")
    }
    assert carcel == {"max_delivery_attempts": 1, "max_attempts": 0, "policy": 1, "other": 0}
    assert _get(after, "packetbus_agents", liveness="live") == 1
    assert _get(after, "packetbus_agents", liveness="stale") == 1
    assert _get(after, "packetbus_store_used_memory_bytes", store="external") > 0
    truncated = {k: v for k, v in after.items() if k[0] == "packetbus_store_scrape_truncated"}
    assert set(truncated.values()) == {0}


def test_a_store_that_cannot_be_read_reads_as_down_and_the_scrape_succeeds(
    tmp_path: Path,
) -> None:
    with own_store(tmp_path / "store") as url:
        pass  # stopped: nothing listens there now
    collector = StoreCollector(url)
    collector.bounds = collector.bounds.__class__(timeout_seconds=0.5)
    registry = CollectorRegistry()
    registry.register(collector)
    samples = _read(registry)
    assert samples == {("packetbus_store_up", frozenset()): 0.0}
