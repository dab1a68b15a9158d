"""The Overview's numbers: a replica's /metrics scrape reduced to a `Reading`, and two
readings per replica turned into one `sample` (rates, latency quantiles, gauges).

Pure functions, no I/O (the scraper is `overview`). Units: rates in events per second,
latency in milliseconds, memory in bytes, times in seconds.

- Counters (`COUNTERS`) are summed over their labels per replica; a rate is the sum over
  the replicas of each replica's increase between its last two readings (the scraper
  passes the last successful one as `Replica.previous`, so a rate after a failed scrape
  spans the gap) divided by the seconds between them. A counter that went down, or a replica whose
  ``process_start_time_seconds`` changed (it restarted), counts as reset: its increase is
  then its new value (counted from zero since the restart), never negative (Prometheus's
  ``rate()`` does the same).
- Dispatch latency: the quantiles (p50, p99) of ``packetbus_dispatch_seconds`` (one
  batch of a caller's packets, a Dispatch call or a DispatchStream batch) over the
  batches of the last interval only (the buckets' increases summed over both ways in and
  over the replicas), interpolated within a bucket as Prometheus's
  ``histogram_quantile`` does; None when no batch was answered.
- Store gauges (`GAUGES`: the carcel, the store's memory) describe the one store every
  replica reads, so they are taken from the first replica that read its store, not summed.
- A value that cannot be known is None (a gap in the chart), never 0: a rate or total
  when some replica was not scraped now or the scrape before, a gauge when no replica
  could read its store.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

# The Overview's counters: its name -> the Prometheus sample summed over every label.
COUNTERS = {
    "dispatched": "packetbus_packets_dispatched_total",
    "delivered": "packetbus_packets_delivered_total",
    "redeliveries": "packetbus_group_redeliveries_total",
    "carceled": "packetbus_group_carceled_total",
    "held": "packetbus_packets_held_total",
    "rejected": "packetbus_packets_rejected_total",
}
# The store's gauges: the Overview's name -> the Prometheus sample summed over its labels.
GAUGES = {
    "carcelPackets": "packetbus_carcel_packets",
    "storeMemoryBytes": "packetbus_store_used_memory_bytes",
}
LATENCY_SAMPLE = "packetbus_dispatch_seconds_bucket"
LATENCY_LABELS: dict[str, str] = {}  # every way in: unary and stream
QUANTILES = {"dispatchLatencyP50Ms": 0.5, "dispatchLatencyP99Ms": 0.99}
_STARTED = "process_start_time_seconds"
_STORE_UP = "packetbus_store_up"

# Every series of a sample, in the order a page shows them.
SERIES = (
    *(f"{name}PerSecond" for name in COUNTERS),
    *QUANTILES,
    *GAUGES,
)


class NotMetrics(ValueError):
    """A scrape's body that is not Prometheus's text format."""


@dataclass(frozen=True, slots=True)
class Reading:
    """One replica's scrape, reduced: `at` (a monotonic clock, seconds), `started` (the
    server process's start time, None when not exported), `counters` (`COUNTERS`' names
    -> totals; 0 for one not yet incremented), `buckets` (Dispatch's latency histogram:
    upper bound in seconds -> cumulative count), `gauges` (`GAUGES`' names -> value; None
    when the scrape could not read the store)."""

    at: float
    started: float | None = None
    counters: dict[str, float] = field(default_factory=dict)
    buckets: dict[float, float] = field(default_factory=dict)
    gauges: dict[str, float | None] = field(default_factory=dict)


def read(text: str, at: float) -> Reading:
    """The `Reading` of a scrape's body `text` (Prometheus text format) taken at `at`.
    Raises NotMetrics when `text` cannot be parsed as such, or is not a packetbus
    server's (no ``packetbus_store_up``)."""
    counters = dict.fromkeys(COUNTERS, 0.0)
    by_sample = {sample: name for name, sample in COUNTERS.items()}
    gauge_by_sample = {sample: name for name, sample in GAUGES.items()}
    gauges: dict[str, float] = {}
    buckets: dict[float, float] = {}
    started: float | None = None
    store_up: bool | None = None
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                name, labels, value = sample.name, sample.labels, sample.value
                if name in by_sample:
                    counters[by_sample[name]] += value
                elif name in gauge_by_sample:
                    key = gauge_by_sample[name]
                    gauges[key] = gauges.get(key, 0.0) + value
                elif name == LATENCY_SAMPLE and all(
                    labels.get(k) == v for k, v in LATENCY_LABELS.items()
                ):
                    bound = float(labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + value
                elif name == _STARTED:
                    started = value
                elif name == _STORE_UP:
                    store_up = value == 1
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise NotMetrics(f"not Prometheus text format: {exc}") from exc
    # Every packetbus endpoint exports it (0 or 1): without it, whatever answered (an
    # empty page, another program's metrics) is not a packetbus server.
    if store_up is None:
        raise NotMetrics(f"no {_STORE_UP}: not a packetbus server's metrics")
    # Without the store (packetbus_store_up 0) its gauges are absent: unknown, not 0.
    known = {name: (gauges.get(name, 0.0) if store_up else None) for name in GAUGES}
    return Reading(at=at, started=started, counters=counters, buckets=buckets, gauges=known)


def restarted(previous: Reading, current: Reading) -> bool:
    """Whether the replica's process changed between the two readings (its start time)."""
    return (
        previous.started is not None
        and current.started is not None
        and previous.started != current.started
    )


def increase(previous: float, current: float, *, reset: bool = False) -> float:
    """How much a counter grew from `previous` to `current` (>= 0): `current` itself
    after a reset (`reset`, or the counter went down)."""
    if reset or current < previous:
        return current
    return current - previous


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The `q` quantile (0-1) of a histogram's `buckets` (upper bound -> cumulative
    count, +Inf included), as Prometheus's histogram_quantile: linear within the bucket
    holding the rank, from 0 for the first; the largest finite bound when the rank falls
    in +Inf. None when the histogram counted nothing."""
    bounds = sorted(buckets)
    if not bounds:
        return None
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


@dataclass(frozen=True, slots=True)
class Replica:
    """One replica's `current` Reading (None: this scrape failed, `error` says why) and
    the `previous` one to take rates from (None: there is none yet)."""

    previous: Reading | None
    current: Reading | None
    error: str | None = None


def _latency(pairs: Sequence[tuple[Reading, Reading]]) -> dict[str, float | None]:
    """Dispatch's latency quantiles (ms) over the calls between each pair's readings."""
    merged: dict[float, float] = {}
    for previous, current in pairs:
        reset = restarted(previous, current) or any(
            current.buckets[b] < previous.buckets.get(b, 0.0) for b in current.buckets
        )
        for bound, count in current.buckets.items():
            grown = increase(previous.buckets.get(bound, 0.0), count, reset=reset)
            merged[bound] = merged.get(bound, 0.0) + grown
    result: dict[str, float | None] = {}
    for name, q in QUANTILES.items():
        seconds = quantile(q, merged)
        result[name] = None if seconds is None else round(seconds * 1000, 3)
    return result


def sample(replicas: Sequence[Replica]) -> dict[str, dict[str, float | None]]:
    """The Overview's sample from every replica's last two scrapes: ``{"values": {SERIES
    name -> number or None}, "totals": {COUNTERS name -> the counter summed over the
    replicas, or None}}`` (see the module docstring for when a value is None)."""
    values: dict[str, float | None] = dict.fromkeys(SERIES)
    totals: dict[str, float | None] = dict.fromkeys(COUNTERS)
    currents = [r.current for r in replicas]
    if replicas and all(c is not None for c in currents):
        for name in COUNTERS:
            totals[name] = sum(c.counters[name] for c in currents if c is not None)
    pairs = [
        (r.previous, r.current)
        for r in replicas
        if r.previous is not None and r.current is not None and r.current.at > r.previous.at
    ]
    if replicas and len(pairs) == len(replicas):
        for name in COUNTERS:
            rate = 0.0
            for previous, current in pairs:
                reset = restarted(previous, current)
                grown = increase(previous.counters[name], current.counters[name], reset=reset)
                rate += grown / (current.at - previous.at)
            values[f"{name}PerSecond"] = round(rate, 6)
        values.update(_latency(pairs))
    for name in GAUGES:
        values[name] = _first_known(c.gauges.get(name) for c in currents if c is not None)
    return {"values": values, "totals": totals}


def _first_known(candidates: Iterable[float | None]) -> float | None:
    return next((value for value in candidates if value is not None), None)
