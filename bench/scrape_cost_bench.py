"""Scrape cost benchmark (issue 15): the server's and its store's CPU per /metrics
scrape, with many packets stored on one topic (a consumer group on it, a task queue
beside it). A scrape must cost the same whatever the number of packets stored.

Reads utime + stime from /proc/<pid>/stat of the server and of its embedded Valkey
before and after `--scrapes` back-to-back scrapes. Prints one JSON document on
stdout; progress and server logs go to stderr. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from dispatch_bench import (
    chunks,
    cpu_seconds,
    free_port,
    fresh_packets,
    local_pid,
    log,
    machine_info,
    spawned_server,
)

import packetbus

BATCH = 1000
IN_FLIGHT = 4


def _scrape(url: str) -> None:
    with urllib.request.urlopen(url, timeout=30) as reply:
        reply.read()


async def _fill(client: packetbus.Client, topic: str, packets: int) -> None:
    """Store `packets` on `topic`, `IN_FLIGHT` batches of BATCH at a time."""
    batches = chunks(fresh_packets(topic, packets), BATCH)
    for start in range(0, len(batches), IN_FLIGHT):
        await asyncio.gather(
            *(client.dispatch_batch(list(b)) for b in batches[start : start + IN_FLIGHT])
        )


async def run(packets: int, scrapes: int) -> dict[str, Any]:
    metrics_port = free_port()
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    topic, queue = f"bench.scrape.{uuid.uuid4().hex[:8]}", "bench.scrape.queue"
    with tempfile.TemporaryDirectory(prefix="scrape-bench-") as tmp:
        data_dir = Path(tmp)
        async with contextlib.AsyncExitStack() as stack:
            server = await stack.enter_async_context(
                spawned_server(
                    data_dir, None, extra_args=("--metrics-listen", f"127.0.0.1:{metrics_port}")
                )
            )
            store = local_pid(int((data_dir / "valkey.pid").read_text()), "valkey")
            pids = {"server": server.process.pid, "store": store}
            client = await packetbus.Client.connect(server.target, timeout=30)
            stack.push_async_callback(client.close)
            await client.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
            await client.task_queue(queue).post(
                packetbus.Task(id="t-1", description="bench"), origin="bench"
            )
            log(f"storing {packets} packets on {topic}")
            await _fill(client, topic, packets)
            await asyncio.to_thread(_scrape, url)  # warm: connections, index backfill
            before = {name: cpu_seconds(pid) if pid else None for name, pid in pids.items()}
            for _ in range(scrapes):
                await asyncio.to_thread(_scrape, url)
            after = {name: cpu_seconds(pid) if pid else None for name, pid in pids.items()}
    per_scrape_ms = {
        name: round(1000 * (after[name] - b) / scrapes, 2)  # type: ignore[operator]
        for name, b in before.items()
        if b is not None and after[name] is not None
    }
    return {
        "packets_stored": packets,
        "scrapes": scrapes,
        "cpu_ms_per_scrape": per_scrape_ms,
        "machine": machine_info("asyncio"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--packets", type=int, default=100_000)
    parser.add_argument("--scrapes", type=int, default=20)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.packets, args.scrapes)), indent=2))


if __name__ == "__main__":
    main()
