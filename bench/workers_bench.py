"""How `serve --workers N` shares the load: clients spread by the server's
assignment (each worker's own port) against the kernel's SO_REUSEPORT hash.

Starts one `packetbus serve --workers N` (embedded Valkey, or --redis-url) and,
alternating the two modes for --rounds rounds, connects a client with
--connections connections (`spread_over_workers` on or off) that sends --packets
packets with `dispatch_batch` (200 per call, 2 per connection in flight). Per
round: packets/s, the connections each worker serves, the CPU each process used (from /proc),
in microseconds per packet and as each worker's share of the workers' CPU.
Prints one JSON document; medians and ranges per mode.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from access_bench import spread
from dispatch_bench import cpu_seconds, free_port, make_packet  # the same 524-byte packets

import packetbus
from packetbus.v1 import packet_service_pb2, packet_service_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
BATCH = 200


def _cpu_seconds(pid: int) -> float:
    seconds = cpu_seconds(pid)
    if seconds is None:  # a worker gone mid-run: no figure to report
        raise RuntimeError(f"cannot read /proc/{pid}/stat")
    return seconds


def _workers(supervisor: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == supervisor and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


async def measure(
    target: str, pids: dict[str, int], connections: int, packets: int, spread: bool
) -> dict[str, Any]:
    # One client with `connections` connections (dispatch batches take turns over
    # them): several Clients in one process would share one TCP connection
    # (gRPC's global subchannel pool) and hide the kernel's spread.
    config = packetbus.ClientConfig(spread_over_workers=spread, connections=connections)
    client = await packetbus.Client.connect(target, config=config)
    try:
        served: Counter[int] = Counter()
        for channel in [client._channel, *client._extra_channels]:
            stub = packet_service_pb2_grpc.PacketServiceStub(channel)
            info = await stub.GetServerInfo(packet_service_pb2.GetServerInfoRequest(), timeout=10)
            served[info.workers.serving] += 1
        topic = f"bench-workers-{os.getpid()}-{time.monotonic_ns()}"
        batches = [
            [packetbus.fill_defaults(make_packet(topic, i)) for i in range(BATCH)]
            for _ in range(packets // BATCH)
        ]
        in_flight = asyncio.Semaphore(2 * connections)

        async def one(batch: list[Any]) -> int:
            async with in_flight:
                results = await client.dispatch_batch(batch, timeout=120)
            return sum(r.WhichOneof("outcome") == "receipt" for r in results)

        before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
        start = time.monotonic()
        sent = sum(await asyncio.gather(*map(one, batches)))
        elapsed = time.monotonic() - start
        used = {name: _cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    finally:
        await client.close()
    workers = {k: v for k, v in used.items() if k.startswith("worker")}
    total = sum(workers.values()) or 1.0
    return {
        "packets": sent,
        "per_s": round(sent / elapsed),
        "connections_per_worker": [served.get(i, 0) for i in range(len(workers))],
        "cpu_us_per_packet": {k: round(v / sent * 1e6, 1) for k, v in used.items()},
        "worker_cpu_shares": [round(v / total, 3) for v in workers.values()],
    }


def _ceiling(round_: dict[str, Any]) -> float:
    busiest = max(v for k, v in round_["cpu_us_per_packet"].items() if k.startswith("worker"))
    return round(1e6 / busiest) if busiest else 0.0


def _summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def stat(values: list[float]) -> dict[str, float]:
        # The rounds' figures have at most 3 decimals; a median of two, one more.
        return spread(values, 4)

    names = rounds[0]["cpu_us_per_packet"].keys()
    return {
        "per_s": stat([r["per_s"] for r in rounds]),
        "busiest_worker_share": stat([max(r["worker_cpu_shares"]) for r in rounds]),
        # What the workers could carry with a core each and the store and clients on
        # other cores: the busiest worker's CPU per packet bounds it (an estimate
        # from CPU time, for machines with too few cores to run that setup).
        "workers_ceiling_per_s": stat([_ceiling(r) for r in rounds]),
        "cpu_us_per_packet": {n: stat([r["cpu_us_per_packet"][n] for r in rounds]) for n in names},
        "rounds": rounds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--packets", type=int, default=20000, help="per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="workers-bench-"))
    argv = [sys.executable, "-m", "packetbus._cli", "serve", "--workers", str(args.workers)]
    argv += ["--listen", f"127.0.0.1:{port}", "--data-dir", str(data), "--grace", "1"]
    argv += ["--worker-ports", "0"]  # free ones: the ports after a random one may be taken
    if args.redis_url:
        argv += ["--redis-url", args.redis_url]
    server = subprocess.Popen(argv, cwd=REPO, stdout=sys.stderr, stderr=sys.stderr)
    try:
        target = f"127.0.0.1:{port}"

        async def run() -> dict[str, Any]:
            probe = await packetbus.Client.connect(target, timeout=60)
            await probe.close()
            await asyncio.sleep(1)  # every worker up
            pids = {f"worker{i}": pid for i, pid in enumerate(_workers(server.pid))}
            if not args.redis_url:
                pids["store"] = int((data / "valkey.pid").read_text())
            pids["client"] = os.getpid()
            results: dict[str, list[dict[str, Any]]] = {"assigned": [], "kernel_hash": []}
            for _ in range(args.rounds):
                for mode, spread in (("assigned", True), ("kernel_hash", False)):
                    results[mode].append(
                        await measure(target, pids, args.connections, args.packets, spread)
                    )
            return {mode: _summary(rounds) for mode, rounds in results.items()}

        report = asyncio.run(run())
        report["settings"] = vars(args) | {"cpus": os.cpu_count()}
    finally:
        server.send_signal(signal.SIGTERM)
        report_code = server.wait(60)
    report["server_exit_code"] = report_code
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
