"""The measurements of perf_bench.py (issue 16's acceptance bench): latency at a fixed rate,
ingest and consume on packetbus, the raw store and NATS JetStream, and store memory per
retained packet. Each returns `dispatch_bench.measure`'s report (per_s, CPU µs per packet
per process from /proc), so every system is read the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from delivery_bench import consume_all, fill, run_until
from dispatch_bench import (
    BATCH,
    Tally,
    auto_batched,
    chunks,
    dispatch_calls,
    fresh_packets,
    make_packet,
    measure,
    percentile,
    raw_batches,
    raw_write_all,
)
from store_memory import used_memory

from packetbus import EARLIEST, LATEST, Client, PacketbusError, Settling, fill_defaults
from packetbus.v1 import packet_service_pb2
from packetbus_server._custodian import Custodian
from packetbus_server._keyring import Keyring
from packetbus_server._scripts import DISPATCH

Pids = dict[str, int | None]
FETCH = 200
# dispatch_batch: 200 packets a call, 8 calls in flight (issue 16's figure).
BATCHES_IN_FLIGHT = 8
NATS_PENDING = 256
WARM_ORIGIN = "bench-warmup"
GROUP = "bench"
CONSUMERS = (1, 2)


# -- latency at a fixed rate ---------------------------------------------------------


@dataclass
class Clock:
    """Send and receipt times of one latency measurement, by packet index."""

    total: int
    sent: dict[int, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    all_in: asyncio.Event = field(default_factory=asyncio.Event)

    def received(self, i: int) -> None:
        start = self.sent.pop(i, None)
        if start is not None:
            self.latencies_ms.append((time.perf_counter_ns() - start) / 1e6)
            if len(self.latencies_ms) == self.total:
                self.all_in.set()

    def report(self) -> dict[str, Any]:
        values = sorted(self.latencies_ms)
        if not values:
            return {}
        return {
            "p50_ms": round(percentile(values, 0.5), 3),
            "p99_ms": round(percentile(values, 0.99), 3),
            "max_ms": round(values[-1], 3),
        }


async def paced(
    clock: Clock, rate: float, send: Callable[[int], Coroutine[Any, Any, None]], tally: Tally
) -> None:
    """Call `send(i)` at `rate` per second (each in its own task, as independent producers
    would), then wait up to 10 s for every receipt; `tally.ok` counts the receipts."""
    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    for i in range(clock.total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        clock.sent[i] = time.perf_counter_ns()
        tasks.append(asyncio.create_task(send(i)))
    await asyncio.gather(*tasks)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(clock.all_in.wait(), 10)
    # Not received and not failed: measure() counts the shortfall as errors.
    tally.ok = len(clock.latencies_ms)


async def until_ready(ready: asyncio.Event, poke: Callable[[], Awaitable[None]]) -> None:
    """Poke (send a warm-up message) until the receiver has seen one: a receiver that
    starts at LATEST is positioned when the server handles its call, not before."""
    for _ in range(20):
        await poke()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready.wait(), 0.5)
            return
    raise RuntimeError("the receiver never saw a warm-up message")


async def packetbus_latency(
    client: Client, topic: str, rate: float, seconds: float, pids: Pids, *, group: bool
) -> dict[str, Any]:
    """`Client.dispatch()` at `rate` to a LATEST subscriber, or (`group`) to the one
    consumer of a consumer group created at LATEST, which acks every batch it gets."""
    clock = Clock(max(1, round(rate * seconds)))
    packets = [make_packet(topic, i) for i in range(clock.total)]
    index: dict[str, int] = {}
    ready = asyncio.Event()
    settling: list[asyncio.Task[Any]] = []

    def seen(stored: packet_service_pb2.StoredPacket) -> None:
        if stored.packet.origin == WARM_ORIGIN:
            ready.set()
        elif (i := index.get(stored.packet.tracking_id)) is not None:
            clock.received(i)

    async def settle(s: Settling) -> None:
        with contextlib.suppress(PacketbusError):
            await s

    async def poke() -> None:
        warm = make_packet(topic, 0)
        warm.origin = WARM_ORIGIN
        await client.dispatch(warm)

    async def receive() -> None:
        if not group:
            async with client.subscribe(topic, start=LATEST) as subscription:
                async for stored in subscription:
                    seen(stored)
            return
        async with client.consume(topic, GROUP, consumer="lat", max_batch_packets=FETCH) as c:
            async for batch in c.batches():
                for delivery in batch:
                    seen(delivery.packet)
                settling.append(asyncio.create_task(settle(c.ack(*batch))))

    if group:
        await poke()  # the topic exists before its group
        await client.create_consumer_group(topic, GROUP, start=LATEST)
    receiver = asyncio.create_task(receive())
    try:
        await until_ready(ready, poke)

        async def body(tally: Tally) -> None:
            async def send(i: int) -> None:
                packet = fill_defaults(packets[i])
                index[packet.tracking_id] = i
                try:
                    await client.dispatch(packet)
                except PacketbusError as exc:
                    clock.sent.pop(i, None)
                    tally.error(1, str(exc))

            await paced(clock, rate, send, tally)

        name = "group" if group else "subscriber"
        report = await measure(f"latency_packetbus_{name}", clock.total, pids, body)
    finally:
        receiver.cancel()
        await asyncio.gather(receiver, *settling, return_exceptions=True)
        if group:  # a long-lived store (--redis-url) keeps no leftover group
            await client.delete_consumer_group(topic, GROUP)
    return report | clock.report() | {"rate": rate}


async def nats_latency(
    js: Any, stream: str, payload: bytes, rate: float, seconds: float, pids: Pids
) -> dict[str, Any]:
    """`js.publish` at `rate` to a push consumer (auto-acked); the index rides in a header."""
    subject = f"{stream.lower()}.latency"
    await js.add_stream(name=stream, subjects=[subject])
    try:
        clock = Clock(max(1, round(rate * seconds)))
        ready = asyncio.Event()

        async def on_message(message: Any) -> None:
            i = int((message.headers or {}).get("i", "-1"))
            if i < 0:
                ready.set()
            else:
                clock.received(i)

        subscription = await js.subscribe(subject, stream=stream, cb=on_message)
        try:
            await until_ready(ready, lambda: js.publish(subject, payload))

            async def body(tally: Tally) -> None:
                async def send(i: int) -> None:
                    try:
                        await js.publish(subject, payload, headers={"i": str(i)})
                    except Exception as exc:
                        clock.sent.pop(i, None)
                        tally.error(1, repr(exc))

                await paced(clock, rate, send, tally)

            report = await measure("latency_nats_push", clock.total, pids, body)
        finally:
            await subscription.unsubscribe()
    finally:
        await js.delete_stream(stream)
    return report | clock.report() | {"rate": rate}


# -- ingest ---------------------------------------------------------------------------


async def packetbus_ingest(
    client: Client, topic: str, packets: int, pids: Pids, *, auto: bool
) -> dict[str, Any]:
    """`dispatch()` from all packets at once (the client batches), or `dispatch_batch`
    of 200 with 8 calls in flight; packets built off the clock."""
    fresh = fresh_packets(topic, packets)
    if auto:
        return await measure(
            "ingest_packetbus_dispatch", packets, pids, lambda t: auto_batched(client, fresh, t)
        )
    batches = chunks(fresh, BATCH)
    report = await measure(
        "ingest_packetbus_dispatch_batch",
        packets,
        pids,
        lambda t: dispatch_calls(client, batches, BATCHES_IN_FLIGHT, t),
    )
    return report | {"batch": BATCH, "in_flight": BATCHES_IN_FLIGHT}


async def raw_ingest(
    url: str, topic: str, packets: int, custodian: Custodian, pids: Pids
) -> dict[str, Any]:
    """The floor: the server's own dispatch script by EVALSHA on the same store, with the
    bytes a signing server writes (dispatch_bench's raw_redis_baseline), 8 calls in flight."""
    batches = raw_batches(topic, packets, custodian)
    r = aioredis.Redis.from_url(url)
    try:
        sha = await r.script_load(DISPATCH.source)
        report = await measure(
            "ingest_raw_redis",
            packets,
            pids,
            lambda t: raw_write_all(r, sha, topic, batches, BATCHES_IN_FLIGHT, t),
        )
    finally:
        await r.aclose()
    return report | {"batch": BATCH, "in_flight": BATCHES_IN_FLIGHT}


def baseline_custodian(keys_dir: Path) -> Custodian:
    return Custodian(Keyring.load(keys_dir / "baseline-custody-keys.json"), "bench-baseline")


async def publish_all(js: Any, subject: str, payload: bytes, count: int, tally: Tally) -> None:
    """`publish_async` of `count` messages (the context's pending bound applies); every
    PubAck awaited."""
    futures = [await js.publish_async(subject, payload) for _ in range(count)]
    for outcome in await asyncio.gather(*futures, return_exceptions=True):
        if isinstance(outcome, BaseException):
            tally.error(1, repr(outcome))
        else:
            tally.ok += 1


async def nats_ingest(
    js: Any, stream: str, payload: bytes, packets: int, pids: Pids
) -> dict[str, Any]:
    subject = f"{stream.lower()}.ingest"
    await js.add_stream(name=stream, subjects=[subject])
    try:
        report = await measure(
            "ingest_nats_publish_async",
            packets,
            pids,
            lambda t: publish_all(js, subject, payload, packets, t),
        )
    finally:
        await js.delete_stream(stream)
    return report | {"max_pending": NATS_PENDING}


# -- consume --------------------------------------------------------------------------


async def packetbus_consume(
    client: Client, topic: str, packets: int, consumers: int, pids: Pids
) -> dict[str, Any]:
    """A topic filled off the clock; `consumers` consumers of one group take every delivery
    and ack it, awaiting the server's confirmation of each batch (delivery_bench)."""
    await fill(client, topic, packets)
    await client.create_consumer_group(topic, GROUP, start=EARLIEST)
    report = await measure(
        f"consume_packetbus_{consumers}",
        packets,
        pids,
        lambda t: consume_all(client, topic, GROUP, consumers, packets, t),
    )
    report["outstanding_after"] = (await client.get_consumer_group(topic, GROUP)).outstanding
    # The outstanding count is 0 when all went well; anything else is an error too.
    report["errors"] += report["outstanding_after"]
    await client.delete_consumer_group(topic, GROUP)
    return report


async def filled_stream(js: Any, stream: str, subject: str, payload: bytes, packets: int) -> None:
    """A new JetStream stream on `subject` holding `packets` messages of `payload` (off
    the clock); deleted again if filling it fails."""
    await js.add_stream(name=stream, subjects=[subject])
    filled = Tally()
    await publish_all(js, subject, payload, packets, filled)
    if filled.errors:
        await js.delete_stream(stream)
        raise RuntimeError(f"filling the NATS stream failed: {filled.first_error}")


async def nats_consume(
    js: Any, stream: str, payload: bytes, packets: int, consumers: int, pids: Pids, *, sync: bool
) -> dict[str, Any]:
    """A stream filled off the clock; one durable pull consumer (explicit acks), `consumers`
    pullers doing fetch(200) then `ack()` (sent, unconfirmed) or `ack_sync()` (confirmed)."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig

    subject = f"{stream.lower()}.consume"
    await filled_stream(js, stream, subject, payload, packets)
    try:
        await js.add_consumer(
            stream, ConsumerConfig(durable_name=GROUP, ack_policy=AckPolicy.EXPLICIT)
        )

        async def body(tally: Tally) -> None:
            done = asyncio.Event()

            async def puller() -> None:
                sub = await js.pull_subscribe(subject, GROUP, stream=stream)
                while not done.is_set():
                    try:
                        messages = await sub.fetch(FETCH, timeout=1)
                    except nats.errors.TimeoutError:
                        continue
                    for message in messages:
                        await (message.ack_sync() if sync else message.ack())
                    tally.ok += len(messages)
                    if tally.ok >= packets:
                        done.set()

            await run_until(done, [puller() for _ in range(consumers)])

        ack = "ack_sync" if sync else "ack"
        report = await measure(f"consume_nats_{ack}_{consumers}", packets, pids, body)
    finally:
        await js.delete_stream(stream)
    return report | {"fetch": FETCH, "acks": f"msg.{ack}()"}


# -- memory ---------------------------------------------------------------------------


async def packetbus_memory(client: Client, url: str, topic: str, packets: int) -> dict[str, Any]:
    """used_memory of the store before and after `packets` retained packets, over `packets`."""
    r = aioredis.Redis.from_url(url)
    try:
        before = await used_memory(r)
        await fill(client, topic, packets)
        after = await used_memory(r)
    finally:
        await r.aclose()
    size = len(fill_defaults(make_packet(topic, 0)).SerializeToString())
    return {
        "packets": packets,
        "used_memory_delta": after - before,
        "bytes_per_packet": round((after - before) / packets),
        "packet_bytes_as_sent": size,
    }


async def nats_memory(js: Any, stream: str, payload: bytes, packets: int) -> dict[str, Any]:
    """JetStream's own accounting of a stream of `packets` messages: state.bytes / messages."""
    subject = f"{stream.lower()}.memory"
    await js.add_stream(name=stream, subjects=[subject])
    try:
        filled = Tally()
        await publish_all(js, subject, payload, packets, filled)
        state = (await js.stream_info(stream)).state
    finally:
        await js.delete_stream(stream)
    return {
        "messages": state.messages,
        "stream_bytes": state.bytes,
        "bytes_per_message": round(state.bytes / max(1, state.messages)),
        "payload_bytes": len(payload),
        "errors": filled.errors,
        "storage": "file (stream defaults): on disk, not in memory",
    }
