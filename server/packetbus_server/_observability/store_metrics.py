"""Gauges read from the store when /metrics is scraped: what every replica would
answer alike (group lag and outstanding leases, task queues by status, agents by
liveness, the carcel by reason, the store's memory).

To be filled by the metrics work (issue 15, item 1). The endpoint registers one
`StoreCollector` per process that serves /metrics.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector


class StoreCollector(Collector):
    """Reads the store at `redis_url` on each scrape; `embedded`: the store is the
    server's own embedded Valkey (its memory is then reported as such)."""

    def __init__(self, redis_url: str, *, embedded: bool = False) -> None:
        self.redis_url = redis_url
        self.embedded = embedded

    def collect(self) -> Iterable[Metric]:
        return ()
