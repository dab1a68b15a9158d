"""Issue 16 target 1 at a glance: `Client.dispatch()` at a few fixed rates to one LATEST
subscriber (or a consumer group's one consumer), on a spawned `packetbus serve` with its
embedded Valkey. Per rate: p50/p99 latency, CPU µs per delivered packet per process (from
/proc), and store calls per packet (the difference of Valkey's INFO commandstats).

    .venv/bin/python bench/latency_probe.py --rates 250,500,1000 --seconds 5 [--group] [--unary]

`--unary` sends dispatch()'s batches as unary Dispatch calls (BatchSettings(use_stream=False)),
as before the DispatchStream, for a before/after on the same build. `--hold N` keeps the server up N seconds before the runs and prints its pid, so a profiler
(py-spy record --pid) can attach. Prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, cast

import perf_parts as parts
import redis.asyncio as aioredis
from delivery_bench import embedded_store_url
from dispatch_bench import local_pid, log, percentile, spawned_server

from packetbus import BatchSettings, Client, ClientConfig


async def commandstats(url: str) -> dict[str, int]:
    """Calls per command since the store started (INFO commandstats)."""
    r = aioredis.Redis.from_url(url)
    try:
        info = await r.info("commandstats")
    finally:
        await r.aclose()
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in info.items()}


class _Timed:
    """`client` whose dispatch() records the milliseconds until it returned in `acks`."""

    def __init__(self, client: Client, acks: list[float]) -> None:
        self._client, self._acks = client, acks

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def dispatch(self, packet: Any) -> Any:
        start = time.perf_counter_ns()
        result = await self._client.dispatch(packet)
        self._acks.append((time.perf_counter_ns() - start) / 1e6)
        return result


def timed(client: Client, acks: list[float]) -> Client:
    return cast(Client, _Timed(client, acks))


async def main(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"group": args.group, "unary": args.unary, "runs": []}
    with tempfile.TemporaryDirectory(prefix="packetbus-lat-") as tmp:
        data_dir = Path(tmp) / "server"
        async with spawned_server(data_dir, None) as server:
            url = embedded_store_url(data_dir)
            pids: dict[str, int | None] = {
                "client": os.getpid(),
                "server": server.process.pid,
                "store": local_pid(int((data_dir / "valkey.pid").read_text()), "valkey"),
            }
            log(f"pids: {pids}")
            if args.hold:
                await asyncio.sleep(args.hold)
            config = ClientConfig(batching=BatchSettings(use_stream=not args.unary))
            client = await Client.connect(server.target, config=config, timeout=30)
            try:
                for rate in (float(r) for r in args.rates.split(",")):
                    topic = f"bench.{uuid.uuid4().hex[:8]}.lat"
                    before = await commandstats(url)
                    acks: list[float] = []
                    report = await parts.packetbus_latency(
                        timed(client, acks), topic, rate, args.seconds, pids, group=args.group
                    )
                    acks.sort()
                    if acks:
                        report["ack_p50_ms"] = round(percentile(acks, 0.5), 3)
                        report["ack_p99_ms"] = round(percentile(acks, 0.99), 3)
                    after = await commandstats(url)
                    count = max(1, report.get("packets", 1))
                    calls = {
                        k: round((after[k] - before.get(k, 0)) / count, 2)
                        for k in after
                        if after[k] - before.get(k, 0) > 0 and k not in ("info",)
                    }
                    report["store_calls_per_packet"] = calls
                    report["store_calls_per_packet_total"] = round(sum(calls.values()), 2)
                    out["runs"].append(report)
                    log(json.dumps(report))
            finally:
                await client.close()
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="250,500,1000")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--group", action="store_true")
    parser.add_argument("--hold", type=float, default=0.0)
    parser.add_argument("--unary", action="store_true", help="dispatch by unary calls")
    with contextlib.suppress(KeyboardInterrupt):
        json.dump(asyncio.run(main(parser.parse_args())), sys.stdout, indent=1)
        print()
