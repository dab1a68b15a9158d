"""Delivery benchmark: consumer-group delivery + ack next to NATS JetStream pull + ack.

Prints one JSON document on stdout; progress goes to stderr. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import uuid
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from dispatch_bench import (
    BATCH,
    Tally,
    chunks,
    find_pid,
    local_pid,
    machine_info,
    make_packet,
    measure,
    nats_connect,
    payload_of,
    redis_info,
    spawned_server,
    store_pid,
)

from packetbus import EARLIEST, Client, PacketbusError, Settling, fill_defaults
from packetbus_server import _keys

FETCH = 200
DURABLE = "bench"
RAW_GROUP = "bench-raw"
CONSUMERS = (1, 2)


async def fill(client: Client, topic: str, count: int) -> None:
    """Dispatch `count` packets to `topic`, off the clock."""
    for batch in chunks([make_packet(topic, i) for i in range(count)], BATCH):
        results = await client.dispatch_batch([fill_defaults(p) for p in batch], timeout=60)
        bad = [r for r in results if r.WhichOneof("outcome") != "receipt"]
        if bad:
            raise RuntimeError(f"filling {topic} failed: {bad[0].error.message}")


async def run_until(done: asyncio.Event, workers: Sequence[Coroutine[Any, Any, None]]) -> None:
    """Run `workers` until `done` is set (300 s at most), then cancel what still runs."""
    tasks = [asyncio.create_task(worker) for worker in workers]
    try:
        await asyncio.wait_for(done.wait(), 300)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def consume_all(
    client: Client,
    topic: str,
    group: str,
    consumers: int,
    count: int,
    tally: Tally,
    *,
    pipelined: bool = False,
) -> None:
    """`consumers` consumers of `group` take and ack deliveries until `count` are acked.

    Each consumer awaits the server's confirmation of a batch's acks before it takes
    the next batch; `pipelined`, it takes the next batch at once and the confirmations
    are counted as they arrive (the measurement still ends only when all are in).
    """
    done = asyncio.Event()
    taken = 0

    async def confirmed(settling: Settling) -> None:
        try:
            results = await settling
        except PacketbusError as exc:
            tally.error(1, exc.message)
            return
        tally.ok += len(results)
        if tally.ok + tally.errors >= count:
            done.set()

    async def consumer(name: str) -> None:
        nonlocal taken
        pending: list[asyncio.Task[None]] = []
        async with client.consume(
            topic, group, consumer=name, max_outstanding_packets=4 * FETCH, max_batch_packets=FETCH
        ) as deliveries:
            async for batch in deliveries.batches():
                taken += len(batch)
                confirming = confirmed(deliveries.ack(*batch))
                if pipelined:
                    pending.append(asyncio.create_task(confirming))
                else:
                    await confirming
                if taken >= count:
                    break
            await asyncio.gather(*pending)

    await run_until(done, [consumer(f"bench-{i}") for i in range(consumers)])


async def bench_packetbus(
    client: Client, run_id: str, packets: int, pids: dict[str, int | None]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for consumers, pipelined in [(c, p) for p in (False, True) for c in CONSUMERS]:
        name = f"consumers_{consumers}" + ("_pipelined" if pipelined else "")
        topic = f"bench.{run_id}.groups.{name}"
        await fill(client, topic, packets)
        await client.create_consumer_group(topic, "bench", start=EARLIEST)

        async def body(
            tally: Tally, t: str = topic, c: int = consumers, pl: bool = pipelined
        ) -> None:
            await consume_all(client, t, "bench", c, packets, tally, pipelined=pl)

        out[name] = await measure(f"packetbus_{name}", packets, pids, body)
        out[name] |= {
            "max_batch_packets": FETCH,
            "acks": "confirmed by the server, "
            + ("counted as they arrive" if pipelined else "awaited per batch"),
        }
        group = await client.get_consumer_group(topic, "bench")
        out[name]["outstanding_after"] = group.outstanding
        await client.delete_consumer_group(topic, "bench")
    return out


def embedded_store_url(data_dir: Path) -> str:
    """The address of the Valkey a spawned server embeds (from the config it wrote)."""
    settings = dict(
        line.split(None, 1)
        for line in (data_dir / "valkey.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#") and " " in line
    )
    if "unixsocket" in settings:  # the embedded store listens on its unix socket only
        return f"unix://{settings['unixsocket'].strip()}"
    return f"redis://{settings['bind'].split()[0]}:{settings['port'].strip()}"


async def raw_consume_all(url: str, log_key: str, consumers: int, count: int, tally: Tally) -> None:
    """`consumers` plain redis-py consumers: XREADGROUP 200, then XACK them, until `count`."""
    done = asyncio.Event()

    async def consumer(name: str) -> None:
        r = aioredis.Redis.from_url(url)
        try:
            while not done.is_set():
                # [[stream, [(id, fields), ...]]] with RESP2, as this connection speaks.
                got: Any = await r.xreadgroup(
                    RAW_GROUP, name, {log_key: ">"}, count=FETCH, block=500
                )
                if not got:
                    continue
                ids: list[bytes] = [entry_id for entry_id, _ in got[0][1]]
                acked = await r.xack(log_key, RAW_GROUP, *ids)
                tally.ok += acked
                if acked != len(ids):
                    tally.error(len(ids) - acked, f"XACK acked {acked} of {len(ids)}")
                if tally.ok + tally.errors >= count:
                    done.set()
        finally:
            await r.aclose()

    await run_until(done, [consumer(f"raw-{i}") for i in range(consumers)])


async def bench_raw_redis(
    client: Client, url: str, run_id: str, packets: int, pids: dict[str, int | None]
) -> dict[str, Any]:
    """The floor under packetbus: the same log entries, on the same store, read and acked
    with plain Redis stream commands (no gRPC, no leases or custody hops)."""
    out: dict[str, Any] = {}
    r = aioredis.Redis.from_url(url)
    try:
        for consumers in CONSUMERS:
            name = f"consumers_{consumers}"
            topic = f"bench.{run_id}.raw.{name}"
            await fill(client, topic, packets)
            log_key = _keys.topic_log(topic)
            await r.xgroup_create(log_key, RAW_GROUP, id="0")

            async def body(tally: Tally, k: str = log_key, c: int = consumers) -> None:
                await raw_consume_all(url, k, c, packets, tally)

            out[name] = await measure(f"raw_redis_{name}", packets, pids, body)
            out[name] |= {"count": FETCH, "acks": "XACK per batch, confirmed"}
            await r.xgroup_destroy(log_key, RAW_GROUP)
    finally:
        await r.aclose()
    return out


async def bench_nats(run_id: str, payload: bytes, packets: int) -> dict[str, Any]:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig

    nc = await nats_connect()
    if isinstance(nc, str):
        return {"skipped": nc}
    out: dict[str, Any] = {}
    try:
        js = nc.jetstream()
        version = nc.connected_server_version
        out["server"] = f"nats-server {version.major}.{version.minor}.{version.patch}"
        out["storage"] = "file (stream defaults)"
        pids = {"client": os.getpid(), "nats": find_pid("nats-server")}
        for consumers in CONSUMERS:
            stream, subject = f"BENCHD_{run_id}_{consumers}", f"benchd.{run_id}.{consumers}"
            try:
                await js.add_stream(name=stream, subjects=[subject])
            except Exception as exc:
                return {"skipped": f"the nats-server has no usable JetStream: {exc!r}"}
            try:
                for part in chunks(range(packets), 256):
                    await asyncio.gather(*(js.publish(subject, payload) for _ in part))
                durable = DURABLE
                await js.add_consumer(
                    stream, ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT)
                )

                async def body(
                    tally: Tally, s: str = subject, st: str = stream, c: int = consumers
                ) -> None:
                    done = asyncio.Event()

                    async def puller() -> None:
                        sub = await js.pull_subscribe(s, DURABLE, stream=st)
                        while not done.is_set():
                            try:
                                messages = await sub.fetch(FETCH, timeout=1)
                            except nats.errors.TimeoutError:
                                continue
                            for message in messages:
                                await message.ack()
                            tally.ok += len(messages)
                            if tally.ok >= packets:
                                done.set()

                    await run_until(done, [puller() for _ in range(c)])

                name = f"consumers_{consumers}"
                out[name] = await measure(f"nats_pull_ack_{name}", packets, pids, body)
                out[name] |= {
                    "fetch": FETCH,
                    "acks": "msg.ack(): sent, not confirmed (nats-py)",
                }
            finally:
                await js.delete_stream(stream)
    finally:
        await nc.close()
    return out


def ratio(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    if not a.get("per_s") or not b.get("per_s"):
        return None
    return round(float(a["per_s"]) / float(b["per_s"]), 3)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:12]
    result: dict[str, Any] = {
        "run_id": run_id,
        "config": {
            "packets": args.packets,
            "consumers": list(CONSUMERS),
            "server_store": args.redis_url or "embedded Valkey (AOF everysec)",
        },
    }
    payload = payload_of("x")
    with tempfile.TemporaryDirectory(prefix="packetbus-bench-") as tmp:
        async with spawned_server(Path(tmp) / "server", args.redis_url) as server:
            pids: dict[str, int | None] = {"client": os.getpid(), "server": server.process.pid}
            if args.redis_url:
                pids["store"] = store_pid(await redis_info(args.redis_url))
            else:
                pids["store"] = local_pid(
                    int((server.data_dir / "valkey.pid").read_text()), "valkey"
                )
            store_url = args.redis_url or embedded_store_url(server.data_dir)
            async with await Client.connect(server.target, timeout=30) as client:
                result["packetbus"] = await bench_packetbus(client, run_id, args.packets, pids)
                result["raw_redis_baseline"] = await bench_raw_redis(
                    client, store_url, run_id, args.packets, pids
                )
        result["server_exit_code"] = server.exit_code
    result["nats_jetstream"] = await bench_nats(run_id, payload, args.packets)
    result["ratios"] = {
        f"packetbus_over_nats_{name}": ratio(
            result["packetbus"][name],
            result["nats_jetstream"].get(name.removesuffix("_pipelined"), {}),
        )
        for name in result["packetbus"]
    }
    for name, raw in result["raw_redis_baseline"].items():
        result["ratios"][f"packetbus_over_raw_redis_{name}"] = ratio(result["packetbus"][name], raw)
        result["ratios"][f"raw_redis_over_nats_{name}"] = ratio(
            raw, result["nats_jetstream"].get(name, {})
        )
    # CPU per packet, all processes together: steadier than packets/s on a small,
    # shared machine (lower is better for packetbus; 1.0 is as frugal as NATS).
    for name, ours in result["packetbus"].items():
        theirs = result["nats_jetstream"].get(name.removesuffix("_pipelined"), {})
        ours_us = ours.get("cpu_us_per_packet", {}).get("total")
        theirs_us = theirs.get("cpu_us_per_packet", {}).get("total")
        result["ratios"][f"cpu_per_packet_packetbus_over_nats_{name}"] = (
            round(ours_us / theirs_us, 2) if ours_us and theirs_us else None
        )
    result["machine"] = machine_info("uvloop" if args.uvloop else "asyncio")
    result["total_errors"] = sum(
        m.get("errors", 0)
        for part in (result["packetbus"], result["raw_redis_baseline"], result["nats_jetstream"])
        for m in part.values()
        if isinstance(m, dict)
    )
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-url", help="Redis for the spawned server (--redis-url)")
    parser.add_argument(
        "--packets", type=int, default=20000, help="packets per measurement (default 20000)"
    )
    parser.add_argument("--quick", action="store_true", help="2000 packets, for a smoke test")
    parser.add_argument("--no-uvloop", dest="uvloop", action="store_false")
    args = parser.parse_args(argv)
    if args.quick:
        args.packets = 2000
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.uvloop:
        import uvloop

        result = uvloop.run(run(args))
    else:
        result = asyncio.run(run(args))
    json.dump(result, sys.stdout, indent=2)
    print()
    return 1 if result["total_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
