"""Observability benchmark: batched signed ingest with the /metrics endpoint on (scraped
every second) and tracing off, beside the same server with both off, in one run.

Issue 15's acceptance asks that the two be under 3% apart. Prints one JSON document on
stdout; progress and server logs go to stderr. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import signal
import subprocess
import sys
import tempfile
import timeit
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from access_bench import (
    System,
    run_rounds,
    same_round_ratios,
    start_system,
    summary,
    verdict,
)
from dispatch_bench import (
    BATCH,
    error_count,
    free_port,
    log,
    machine_info,
    payload_of,
    run_and_report,
    warm_up,
)

ROUNDS = 5
IN_FLIGHT = 8  # dispatch_batch calls of BATCH packets in flight
SCRAPE_SECONDS = 1.0
# Issue 15: "batched ingest with metrics on and tracing off, beside both off: under 3% apart".
BUDGET = 0.03

# A scraper of its own process, so its CPU is charged to neither the client nor a server:
# GET the URL every SCRAPE_SECONDS; prints how many scrapes succeeded and failed on exit.
SCRAPER = """
import sys, time, urllib.request
url, every = sys.argv[1], float(sys.argv[2])
ok = failed = 0
try:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                reply.read()
            ok += 1
        except OSError:
            failed += 1
        time.sleep(every)
except KeyboardInterrupt:
    print(ok, failed, flush=True)
"""


def per_call_cost(calls: int = 200_000) -> dict[str, float]:
    """What one RPC's observation costs in this process (calls.begin + calls._record:
    started, handled by code, the histogram, one message each way), in ns."""
    import grpc

    from packetbus_server._observability import calls as observed

    class _Context:
        # What begin reads of a grpc.aio context: the peer.
        def peer(self) -> str:
            return "ipv4:127.0.0.1:50000"

    context: Any = _Context()

    def one() -> None:
        call = observed.begin(
            "packetbus.v1.PacketService", "Dispatch", observed.UNARY, None, context
        )
        call.received = 1
        call.sent = 1
        observed._record(call, grpc.StatusCode.OK, 0.001)

    one()  # the labelled children are made on the first call
    best = min(timeit.repeat(one, number=calls, repeat=3))
    ns = best / calls * 1e9
    return {"ns_per_call": round(ns, 1), "ns_per_packet_at_batch": round(ns / BATCH, 2)}


async def run(args: argparse.Namespace, event_loop: str) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:12]
    metrics_port = free_port()
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    result: dict[str, Any] = {
        "run_id": run_id,
        "config": {
            "packets_per_round": args.packets,
            "rounds": args.rounds,
            "batch": BATCH,
            "in_flight": IN_FLIGHT,
            "payload_bytes": len(payload_of(f"bench.{run_id}.off.r1")),
            "scrape_every_seconds": SCRAPE_SECONDS,
            "tracing": "off on both (the server default)",
            "store": "embedded Valkey per server, each its own data dir (AOF everysec)",
            "budget_percent": BUDGET * 100,
            "quick": args.quick,
        },
        "per_call_observation": per_call_cost(),
    }
    systems = [
        System("off", "no metrics endpoint, tracing off"),
        System(
            "metrics",
            f"--metrics-listen 127.0.0.1:{metrics_port}, scraped every second; tracing off",
            ("--metrics-listen", f"127.0.0.1:{metrics_port}"),
        ),
    ]
    with tempfile.TemporaryDirectory(prefix="packetbus-observability-bench-") as tmp:
        async with contextlib.AsyncExitStack() as stack:
            running = [
                await start_system(stack, system, Path(tmp) / f"data-{system.name}")
                for system in systems
            ]
            scraper = await asyncio.create_subprocess_exec(
                sys.executable, "-c", SCRAPER, url, str(SCRAPE_SECONDS), stdout=subprocess.PIPE
            )
            try:
                for r in running:
                    await warm_up(r.lane.client, f"bench.{run_id}.{r.system.name}")
                await run_rounds(running, run_id, args.packets, args.rounds, in_flight=IN_FLIGHT)
            finally:
                scraper.send_signal(signal.SIGINT)  # it prints its tally
                tally, _ = await asyncio.wait_for(scraper.communicate(), 10)
                ok, failed = (int(x) for x in tally.split())
        result["systems"] = {r.system.name: summary(r) for r in running}
        for r in running:
            result["systems"][r.system.name]["server_exit_code"] = r.server.exit_code
    result["scrapes"] = {"ok": ok, "errors": failed}
    roles = ("total", "server", "client", "store")
    ratios = same_round_ratios(running[1].rounds, running[0].rounds, roles)
    result["ratios_metrics_over_off"] = ratios
    result["cost"] = verdict(ratios, BUDGET, roles=("server",))
    log(f"metrics over off: {result['cost']}")
    result["machine"] = machine_info(event_loop)
    result["total_errors"] = error_count(result)
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--packets", type=int, help="packets per system per round (default 40000; quick 4000)"
    )
    parser.add_argument(
        "--rounds", type=int, help=f"rounds, each measuring both systems (default {ROUNDS})"
    )
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke test")
    args = parser.parse_args(argv)
    if args.packets is None:
        args.packets = 4000 if args.quick else 40_000
    if args.rounds is None:
        args.rounds = ROUNDS
    if args.packets < 1 or args.rounds < 1:
        parser.error("--packets and --rounds must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_and_report(functools.partial(run, args), timed=True)


if __name__ == "__main__":
    sys.exit(main())
