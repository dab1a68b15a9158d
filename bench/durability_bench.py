"""What `serve --durability always` costs beside the default (everysec): a short bench.

For each mode: a `packetbus serve` with its embedded store on a fresh data dir,
then (1) throughput: PACKETS packets in batches of BATCH, IN_FLIGHT calls at
once; (2) latency: SINGLES one-packet dispatches, one at a time (p50, p99).

    .venv/bin/python bench/durability_bench.py [--packets 20000] [--batch 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import packetbus

CLI = Path(sys.executable).parent / "packetbus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def packet(topic: str) -> packetbus.Packet:
    p = packetbus.Packet(
        topic=topic, origin="bench-1", speech_act=packetbus.SpeechAct.SPEECH_ACT_INFORM
    )
    p.finding.claim = "x" * 400  # ~0.5 KiB packets
    p.finding.confidence = 0.5
    return packetbus.fill_defaults(p)


async def measure(
    target: str, packets: int, batch: int, in_flight: int, singles: int
) -> dict[str, float]:
    async with await packetbus.Client.connect(target, timeout=60) as client:
        await client.dispatch_batch([packet("warmup")])
        queue = [[packet("bench") for _ in range(batch)] for _ in range(packets // batch)]
        started = time.perf_counter()

        async def worker() -> None:
            while queue:
                results = await client.dispatch_batch(queue.pop())
                assert all(r.WhichOneof("outcome") == "receipt" for r in results)

        await asyncio.gather(*(worker() for _ in range(in_flight)))
        elapsed = time.perf_counter() - started
        latencies = []
        for _ in range(singles):
            one = packet("single")
            t = time.perf_counter()
            await client.dispatch_batch([one])
            latencies.append((time.perf_counter() - t) * 1000)
    latencies.sort()
    return {
        "packets_per_s": round(packets / elapsed),
        "single_p50_ms": round(statistics.median(latencies), 2),
        "single_p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 2),
    }


def spawn(mode: str, data: str, port: int) -> subprocess.Popen[str]:
    """`packetbus serve --durability MODE`, once it says it is serving."""
    argv = ["serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data]
    server = subprocess.Popen(
        [str(CLI), *argv, "--durability", mode, "--log-level", "WARNING"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert server.stdout is not None
    for line in server.stdout:
        if "serving on" in line:
            return server
    raise SystemExit(f"the server exited with {server.wait()}")


async def run_mode(mode: str, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="pb-dur-") as data:
        port = free_port()
        server = await asyncio.to_thread(spawn, mode, data, port)
        try:
            return await measure(
                f"127.0.0.1:{port}", args.packets, args.batch, args.in_flight, args.singles
            )
        finally:
            server.send_signal(signal.SIGTERM)
            await asyncio.to_thread(server.wait, 60)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packets", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--singles", type=int, default=300)
    args = parser.parse_args()
    report = {mode: await run_mode(mode, args) for mode in ("everysec", "always")}
    print(json.dumps({"batch": args.batch, "in_flight": args.in_flight, **report}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
