"""The Overview's arithmetic (packetbus_console.metrics_series): a scrape reduced to a
Reading, rates across counter resets, Dispatch latency quantiles from histogram buckets,
and gaps (None) where a replica was not scraped."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from packetbus_console.metrics_series import (
    COUNTERS,
    GAUGES,
    SERIES,
    NotMetrics,
    Reading,
    Replica,
    increase,
    quantile,
    read,
    sample,
)

_DISPATCH = 'via="unary"'


def _text(
    *, dispatched: float = 0, delivered: float = 0, started: float = 100.0, store_up: int = 1
) -> str:
    """A /metrics body as the server writes it (Prometheus text format)."""
    lines = [
        "# TYPE process_start_time_seconds gauge",
        f"process_start_time_seconds {started}",
        "# TYPE packetbus_packets_dispatched_total counter",
        f'packetbus_packets_dispatched_total{{kind="packet"}} {dispatched}',
        'packetbus_packets_dispatched_total{kind="task"} 2.0',
        "# TYPE packetbus_packets_delivered_total counter",
        f'packetbus_packets_delivered_total{{via="group"}} {delivered}',
        "# TYPE packetbus_store_up gauge",
        f"packetbus_store_up {store_up}",
        "# TYPE packetbus_dispatch_seconds histogram",
        f'packetbus_dispatch_seconds_bucket{{{_DISPATCH},le="0.001"}} 1.0',
        f'packetbus_dispatch_seconds_bucket{{{_DISPATCH},le="0.01"}} 3.0',
        f'packetbus_dispatch_seconds_bucket{{{_DISPATCH},le="+Inf"}} 4.0',
        "# TYPE grpc_server_handling_seconds histogram",
        # An RPC's buckets are not the dispatch latency (a stream's is its whole life).
        'grpc_server_handling_seconds_bucket{grpc_service="packetbus.v1.PacketService",'
        'grpc_method="DispatchStream",grpc_type="bidi_stream",le="+Inf"} 50.0',
    ]
    if store_up:
        lines += [
            "# TYPE packetbus_carcel_packets gauge",
            'packetbus_carcel_packets{reason="policy"} 3.0',
            'packetbus_carcel_packets{reason="max_attempts"} 4.0',
            "# TYPE packetbus_store_used_memory_bytes gauge",
            'packetbus_store_used_memory_bytes{store="embedded"} 1048576.0',
        ]
    return "\n".join(lines) + "\n"


def test_a_scrape_is_read_into_sums_buckets_and_gauges() -> None:
    reading = read(_text(dispatched=5, delivered=7), at=10.0)
    assert reading.at == 10.0
    assert reading.started == 100.0
    # Summed over labels (kind packet and task); a counter never incremented is 0.
    assert reading.counters == {
        "dispatched": 7.0,
        "delivered": 7.0,
        "redeliveries": 0.0,
        "carceled": 0.0,
        "held": 0.0,
        "rejected": 0.0,
    }
    assert reading.buckets == {0.001: 1.0, 0.01: 3.0, math.inf: 4.0}
    assert reading.gauges == {"carcelPackets": 7.0, "storeMemoryBytes": 1048576.0}


def test_without_the_store_its_gauges_are_unknown_not_zero() -> None:
    reading = read(_text(store_up=0), at=1.0)
    assert reading.gauges == {"carcelPackets": None, "storeMemoryBytes": None}


def test_a_body_that_is_not_a_packetbus_servers_metrics_is_refused() -> None:
    with pytest.raises(NotMetrics, match="not Prometheus text format"):
        read("<html><body>a proxy's login page</body></html>\n", at=1.0)
    # Empty, or another program's metrics: not read as a server with nothing counted.
    for text in ("", "# TYPE up gauge\nup 1\n"):
        with pytest.raises(NotMetrics, match="no packetbus_store_up"):
            read(text, at=1.0)


def test_rates_are_the_increase_over_the_seconds_between_scrapes() -> None:
    first = read(_text(dispatched=10, delivered=4), at=100.0)
    second = read(_text(dispatched=30, delivered=4), at=104.0)
    derived = sample([Replica(first, second)])
    assert derived["values"]["dispatchedPerSecond"] == 5.0
    assert derived["values"]["deliveredPerSecond"] == 0.0
    assert derived["totals"]["dispatched"] == 32.0
    # No Dispatch finished in the interval: no latency, not 0 ms.
    assert derived["values"]["dispatchLatencyP50Ms"] is None
    assert derived["values"]["carcelPackets"] == 7.0


def test_a_restart_counts_from_zero_not_negative() -> None:
    before = read(_text(dispatched=500, started=100.0), at=10.0)
    # The new process has counted 12 (+2 tasks) since it started: a drop...
    dropped = read(_text(dispatched=12, started=200.0), at=12.0)
    assert sample([Replica(before, dropped)])["values"]["dispatchedPerSecond"] == 7.0
    # ...or even more than before: the start time tells the restart all the same.
    grown = read(_text(dispatched=900, started=200.0), at=12.0)
    assert sample([Replica(before, grown)])["values"]["dispatchedPerSecond"] == 451.0


def test_replicas_are_summed_and_a_missing_one_is_a_gap() -> None:
    a0, a1 = read(_text(dispatched=0), at=0.0), read(_text(dispatched=10), at=2.0)
    b0, b1 = read(_text(dispatched=0), at=0.5), read(_text(dispatched=4), at=2.5)
    both = sample([Replica(a0, a1), Replica(b0, b1)])
    assert both["values"]["dispatchedPerSecond"] == 7.0  # 5/s + 2/s
    assert both["totals"]["dispatched"] == 18.0  # (10+2) + (4+2)
    down = sample([Replica(a0, a1), Replica(b0, None, "cannot connect")])
    assert down["values"]["dispatchedPerSecond"] is None
    assert down["totals"]["dispatched"] is None
    # The store's gauges come from a replica that read the store: not a gap.
    assert down["values"]["storeMemoryBytes"] == 1048576.0
    back = sample([Replica(a0, a1), Replica(None, b1)])  # the first scrape back: no rate yet
    assert back["values"]["dispatchedPerSecond"] is None
    assert back["totals"]["dispatched"] == 18.0
    nothing = sample([Replica(None, None, "cannot connect")])
    assert set(nothing["values"]) == set(SERIES)
    assert all(v is None for v in nothing["values"].values())
    assert all(v is None for v in nothing["totals"].values())


def test_latency_is_over_the_last_interval_only() -> None:
    def histogram(at: float, fast: float, slow: float) -> Reading:
        # fast calls under 1 ms, slow ones between 10 ms and 100 ms
        total = fast + slow
        return Reading(
            at=at,
            counters=dict.fromkeys(COUNTERS, 0.0),
            buckets={0.001: fast, 0.01: fast, 0.1: total, math.inf: total},
            gauges=dict.fromkeys(GAUGES),
        )

    # 1000 fast calls long ago; in the last interval 100 slow ones only.
    derived = sample([Replica(histogram(0, 1000, 0), histogram(2, 1000, 100))])
    assert derived["values"]["dispatchLatencyP50Ms"] == 55.0  # 10 + 90 * 50/100
    assert derived["values"]["dispatchLatencyP99Ms"] == 99.1


def test_quantile_interpolates_as_histogram_quantile() -> None:
    buckets = {0.1: 10.0, 0.2: 20.0, math.inf: 20.0}
    assert quantile(0.5, buckets) == 0.1
    assert quantile(0.75, buckets) == pytest.approx(0.15)
    assert quantile(0.25, buckets) == pytest.approx(0.05)  # from 0 in the first bucket
    # A rank in +Inf is the largest finite bound.
    assert quantile(0.99, {0.1: 1.0, math.inf: 10.0}) == 0.1
    assert quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None
    assert quantile(0.5, {}) is None


@given(
    previous=st.floats(min_value=0, max_value=1e12),
    current=st.floats(min_value=0, max_value=1e12),
    reset=st.booleans(),
)
def test_an_increase_is_never_negative(previous: float, current: float, reset: bool) -> None:
    grown = increase(previous, current, reset=reset)
    assert grown >= 0
    if not reset and current >= previous:
        assert grown == current - previous
    else:
        assert grown == current


@given(
    counts=st.lists(st.integers(min_value=0, max_value=10**6), min_size=2, max_size=30),
    starts=st.lists(st.sampled_from([1.0, 2.0]), min_size=30, max_size=30),
)
def test_rates_never_go_negative_whatever_the_counters_do(
    counts: list[int], starts: list[float]
) -> None:
    readings = [
        Reading(
            at=float(i),
            started=starts[i],
            counters={name: float(count) for name in COUNTERS},
            buckets={0.01: float(count), math.inf: float(count)},
            gauges=dict.fromkeys(GAUGES),
        )
        for i, count in enumerate(counts)
    ]
    for previous, current in itertools.pairwise(readings):
        values = sample([Replica(previous, current)])["values"]
        for name in COUNTERS:
            rate = values[f"{name}PerSecond"]
            assert rate is not None
            assert rate >= 0
        for name in ("dispatchLatencyP50Ms", "dispatchLatencyP99Ms"):
            latency = values[name]
            assert latency is None or 0 <= latency <= 10.0
