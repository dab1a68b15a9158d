"""Issue 16's acceptance bench: every target beside its peer (NATS JetStream, raw Redis), in
one run, alternating systems in rounds; CPU µs per packet per process read from /proc.

Prints one JSON document on stdout; progress goes to stderr. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import perf_parts as parts
from access_bench import same_round_ratios, summarize
from delivery_bench import embedded_store_url
from dispatch_bench import (
    SpawnedServer,
    error_count,
    find_pid,
    local_pid,
    log,
    machine_info,
    nats_connect,
    payload_of,
    redis_info,
    run_and_report,
    spawned_server,
    store_pid,
)

from packetbus import Client

ROUNDS = 5
# (threshold, direction) per target of issue 16; the figure is a median over the rounds.
TARGETS: dict[str, tuple[float, str]] = {
    "latency_subscriber_p50_ms": (1.0, "<="),
    "latency_subscriber_p99_ms": (3.0, "<="),
    "latency_group_p50_ms": (1.0, "<="),
    "latency_group_p99_ms": (3.0, "<="),
    "ingest_dispatch_over_nats": (0.75, ">="),
    "ingest_dispatch_batch_over_nats": (1.0, ">="),
    "consume_1_over_nats_ack": (0.75, ">="),
    "consume_1_over_nats_ack_sync": (1.5, ">="),
    "consume_2_over_nats_ack": (0.75, ">="),
    "consume_2_over_nats_ack_sync": (1.5, ">="),
    "store_bytes_per_packet": (1024.0, "<="),
}
# Same-round ratios: (section, ours, peer), reported as `<ours>_over_<peer>`.
PAIRS = [
    ("ingest", "packetbus_dispatch", "nats_publish_async"),
    ("ingest", "packetbus_dispatch_batch", "nats_publish_async"),
    ("ingest", "packetbus_dispatch_batch", "raw_redis"),
    ("ingest", "raw_redis", "nats_publish_async"),
    *[
        ("consume", f"packetbus_{n}", f"nats_{ack}_{n}")
        for n in parts.CONSUMERS
        for ack in ("ack", "ack_sync")
    ],
]

Step = Callable[[str], Awaitable[dict[str, Any]]]


async def run_rounds(
    sections: dict[str, dict[str, Step]], rounds: int
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Each round runs every section's measurements once, their order rotated from round
    to round so going first or last favours no system. A step gets a unique name."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {
        section: {name: [] for name in steps} for section, steps in sections.items()
    }
    for n in range(rounds):
        log(f"round {n + 1} of {rounds}")
        for section, steps in sections.items():
            names = list(steps)
            order = names[n % len(names) :] + names[: n % len(names)]
            for position, name in enumerate(order, 1):
                report = await steps[name](f"{section}.{name}.r{n + 1}")
                out[section][name].append(report | {"round": n + 1, "position": position})
    return out


# The ratio targets: which same-round ratio each one reads.
RATIO_OF = {
    "ingest_dispatch_over_nats": "packetbus_dispatch_over_nats_publish_async",
    "ingest_dispatch_batch_over_nats": "packetbus_dispatch_batch_over_nats_publish_async",
    **{
        f"consume_{n}_over_nats_{ack}": f"packetbus_{n}_over_nats_{ack}_{n}"
        for n in parts.CONSUMERS
        for ack in ("ack", "ack_sync")
    },
}


def judge(figures: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each target: its figure (`median`, with `min`/`max` over the rounds where there are
    rounds), its threshold and `met` (None when the figure is missing)."""
    out: dict[str, Any] = {}
    for name, (threshold, direction) in TARGETS.items():
        figure = figures.get(name, {})
        value = figure.get("median")
        met = (
            None
            if value is None
            else value <= threshold
            if direction == "<="
            else value >= threshold
        )
        out[name] = figure | {
            "median": value,
            "threshold": f"{direction} {threshold:g}",
            "met": met,
        }
    return out


def target_figures(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    latency, ratios = result["systems"].get("latency", {}), result["ratios"]
    figures: dict[str, dict[str, Any]] = {}
    for kind in ("subscriber", "group"):
        for q in ("p50_ms", "p99_ms"):
            figures[f"latency_{kind}_{q}"] = dict(latency.get(f"packetbus_{kind}", {}).get(q, {}))
    for name, key in RATIO_OF.items():
        ratio = ratios.get(key, {})
        # The same comparison in total CPU per packet (below 1: cheaper than the peer);
        # steadier than packets/s on a shared machine.
        cpu = ratio.get("cpu_total", {}).get("median")
        figures[name] = dict(ratio.get("per_s", {})) | {"cpu_total_ratio": cpu}
    memory = result["memory"].get("packetbus", {})
    figures["store_bytes_per_packet"] = {"median": memory.get("bytes_per_packet")}
    return figures


async def run(args: argparse.Namespace, event_loop: str) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:12]
    # dispatch_bench's payload, byte for byte: the packet as serialized, on its topic.
    payload = payload_of(f"bench.{run_id}.batched")
    result: dict[str, Any] = {
        "run_id": run_id,
        "config": {
            "rounds": args.rounds,
            "latency_rate": args.rate,
            "latency_seconds": args.seconds,
            "packets": args.packets,
            "memory_packets": args.memory_packets,
            "payload_bytes": len(payload),
            "quick": args.quick,
            "target": args.target or "spawned `packetbus serve` (embedded Valkey, AOF everysec)",
            "redis_url": args.redis_url,
        },
    }
    with tempfile.TemporaryDirectory(prefix="packetbus-perf-") as tmp:
        async with contextlib.AsyncExitStack() as stack:
            pids: dict[str, int | None] = {"client": os.getpid()}
            server: SpawnedServer | None = None
            store_url = args.redis_url
            if args.target:
                target = args.target
            else:
                data_dir = Path(tmp) / "server"
                server = await stack.enter_async_context(spawned_server(data_dir, args.redis_url))
                target, pids["server"] = server.target, server.process.pid
                if not args.redis_url:
                    store_url = embedded_store_url(data_dir)
                    with contextlib.suppress(OSError, ValueError):
                        pids["store"] = local_pid(
                            int((data_dir / "valkey.pid").read_text()), "valkey"
                        )
            if args.redis_url:
                pids["store"] = store_pid(await redis_info(args.redis_url))
            client = await Client.connect(target, timeout=30)
            stack.push_async_callback(client.close)
            nc = await nats_connect()
            if isinstance(nc, str):
                result["nats_jetstream"] = {"skipped": nc}
                nc = None
            else:
                stack.push_async_callback(nc.close)
                version = nc.connected_server_version
                result["nats_jetstream"] = {
                    "server": f"nats-server {version.major}.{version.minor}.{version.patch}",
                    "storage": "file (stream defaults)",
                }
            nats_pids = {"client": os.getpid(), "nats": find_pid("nats-server")}
            js = nc.jetstream(publish_async_max_pending=parts.NATS_PENDING) if nc else None
            custodian = parts.baseline_custodian(Path(tmp))
            sections = steps(
                args, run_id, client, pids, js, nats_pids, payload, store_url, custodian
            )
            # Warm the channel, the server's scripts and the store's connections (off the record).
            await parts.packetbus_ingest(client, f"bench.{run_id}.warm", 1000, pids, auto=False)
            result["systems"] = {
                section: {name: summarize(runs) for name, runs in by_name.items()}
                for section, by_name in (await run_rounds(sections, args.rounds)).items()
            }
            result["ratios"] = {
                f"{ours}_over_{peer}": same_round_ratios(
                    result["systems"][section][ours]["rounds"],
                    result["systems"][section][peer]["rounds"],
                    ("total",),
                )
                for section, ours, peer in PAIRS
                if peer in result["systems"].get(section, {})
                and ours in result["systems"].get(section, {})
            }
            result["memory"] = {}
            if store_url:
                log("memory per retained packet")
                result["memory"]["packetbus"] = await parts.packetbus_memory(
                    client, store_url, f"bench.{run_id}.memory", args.memory_packets
                )
            else:
                result["memory"]["packetbus"] = {"skipped": "--target without --redis-url"}
            if js:
                result["memory"]["nats_jetstream"] = await parts.nats_memory(
                    js, f"PERFM_{run_id}", payload, args.memory_packets
                )
        if server is not None:
            result["server_exit_code"] = server.exit_code
    result["targets"] = judge(target_figures(result))
    result["targets"]["workers_scale"] = {
        "skipped": "target 5 (--workers N) is measured by bench/workers_bench.py: connections "
        "per worker and each worker's CPU share, kernel hash against assigned worker ports"
    }
    result["machine"] = machine_info(event_loop)
    result["total_errors"] = error_count(result) + (1 if result.get("server_exit_code") else 0)
    for name, verdict in result["targets"].items():
        log(f"target {name}: {verdict}")
    return result


def steps(
    args: argparse.Namespace,
    run_id: str,
    client: Client,
    pids: parts.Pids,
    js: Any,
    nats_pids: parts.Pids,
    payload: bytes,
    store_url: str | None,
    custodian: Any,
) -> dict[str, dict[str, Step]]:
    """The measurements by section; each takes a unique name for its topic or stream."""

    def topic(name: str) -> str:
        return f"bench.{run_id}.{name}"

    def stream(name: str) -> str:
        return f"PERF_{run_id}_{name.replace('.', '_')}"

    rate, seconds, n = args.rate, args.seconds, args.packets
    latency: dict[str, Step] = {
        "packetbus_subscriber": lambda u: parts.packetbus_latency(
            client, topic(u), rate, seconds, pids, group=False
        ),
        "packetbus_group": lambda u: parts.packetbus_latency(
            client, topic(u), rate, seconds, pids, group=True
        ),
    }
    ingest: dict[str, Step] = {
        "packetbus_dispatch": lambda u: parts.packetbus_ingest(
            client, topic(u), n, pids, auto=True
        ),
        "packetbus_dispatch_batch": lambda u: parts.packetbus_ingest(
            client, topic(u), n, pids, auto=False
        ),
    }
    if store_url:
        url = store_url
        ingest["raw_redis"] = lambda u: parts.raw_ingest(url, topic(u), n, custodian, pids)
    consume: dict[str, Step] = {}
    for c in parts.CONSUMERS:
        consume[f"packetbus_{c}"] = functools.partial(
            lambda u, c: parts.packetbus_consume(client, topic(u), n, c, pids), c=c
        )
    if js:
        latency["nats_push"] = lambda u: parts.nats_latency(
            js, stream(u), payload, rate, seconds, nats_pids
        )
        ingest["nats_publish_async"] = lambda u: parts.nats_ingest(
            js, stream(u), payload, n, nats_pids
        )
        for c in parts.CONSUMERS:
            for sync in (False, True):
                name = f"nats_{'ack_sync' if sync else 'ack'}_{c}"
                consume[name] = functools.partial(
                    lambda u, c, sync: parts.nats_consume(
                        js, stream(u), payload, n, c, nats_pids, sync=sync
                    ),
                    c=c,
                    sync=sync,
                )
    return {"latency": latency, "ingest": ingest, "consume": consume}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", help="benchmark this running server instead of spawning one")
    parser.add_argument(
        "--redis-url", help="the spawned server's store; the raw baseline and memory use it"
    )
    parser.add_argument("--rounds", type=int, help=f"rounds (default {ROUNDS}; quick 3)")
    parser.add_argument(
        "--packets", type=int, help="packets per ingest/consume measurement (20000; quick 2000)"
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="latency: packets/s (1000)")
    parser.add_argument("--seconds", type=float, help="latency: seconds per run (5; quick 2)")
    parser.add_argument(
        "--memory-packets", type=int, help="retained packets for memory (10000; quick 2000)"
    )
    parser.add_argument("--quick", action="store_true", help="3 small rounds, for a smoke test")
    args = parser.parse_args(argv)
    defaults = {"rounds": (3, ROUNDS), "packets": (2000, 20_000), "seconds": (2.0, 5.0)}
    defaults["memory_packets"] = (2000, 10_000)
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if (
        min(args.rounds, args.packets, args.memory_packets) < 1
        or args.rate <= 0
        or args.seconds <= 0
    ):
        parser.error("counts, --rate and --seconds must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_and_report(functools.partial(run, args), timed=True)


if __name__ == "__main__":
    sys.exit(main())
