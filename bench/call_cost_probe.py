"""Server CPU per call, by kind of call, one call at a time at a fixed rate: what a gRPC
call costs the server beyond the work it asks for (issue 16, target 1).

Kinds on a spawned `packetbus serve` (embedded Valkey):
- `info`: GetServerInfo, packetbus's cheapest unary call (gRPC plus the call wrappers);
- `dispatch`: `dispatch_batch` of one packet, nobody subscribed;
- `dispatch_sub`: the same with one LATEST subscriber receiving each packet (one
  streamed delivery per call);
- `dispatch_stream`, `dispatch_stream_sub`: the same packets through `dispatch()`, each
  alone on the client's open DispatchStream (one message each way per packet).
Kinds on a bare `grpc.aio` server (uvloop, no interceptor, in a subprocess of this
script), the floor packetbus cannot go under with the same calls:
- `grpc_unary`: a unary call with a 600-byte request;
- `grpc_bidi`: one 600-byte message each way on an open bidirectional stream;
- `grpc_stream`: one 600-byte message of a server stream, paced by the server.

Prints JSON: per kind, CPU µs per call per process (/proc utime+stime) and store
commands per call (INFO commandstats, commands inside scripts included).

    .venv/bin/python bench/call_cost_probe.py --rate 1000 --seconds 4
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
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from delivery_bench import embedded_store_url
from dispatch_bench import cpu_seconds, free_port, local_pid, make_packet, spawned_server
from latency_probe import commandstats

from packetbus import LATEST, Client, fill_defaults

PACKETBUS_KINDS = ("info", "dispatch", "dispatch_sub", "dispatch_stream", "dispatch_stream_sub")
BARE_KINDS = ("grpc_unary", "grpc_bidi", "grpc_stream")
MESSAGE = b"x" * 600
Call = Callable[[int], Awaitable[object]]


async def paced(rate: float, count: int, call: Call) -> None:
    """`call(i)` for i in range(count), each awaited, started `rate` per second."""
    start = time.perf_counter()
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await call(i)


def cpu_per_call(before: dict[str, float | None], pids: dict[str, int], n: int) -> dict[str, int]:
    out = {}
    for role, pid in pids.items():
        first, now = before.get(role), cpu_seconds(pid)
        if first is not None and now is not None:
            out[role] = round((now - first) / n * 1e6)
    return out


def cpu_now(pids: dict[str, int]) -> dict[str, float | None]:
    return {role: cpu_seconds(pid) for role, pid in pids.items()}


# -- the bare grpc.aio server ---------------------------------------------------------


async def _bare_serve(port: int, rate: float, count: int) -> None:
    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return b"ok"

    async def bidi(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for _ in requests:
            yield b"ok"

    async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        start = time.perf_counter()
        for i in range(count):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            yield MESSAGE

    server = grpc.aio.server()
    handlers = {
        "U": grpc.unary_unary_rpc_method_handler(unary),
        "B": grpc.stream_stream_rpc_method_handler(bidi),
        "S": grpc.unary_stream_rpc_method_handler(stream),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bare.T", handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def _pinger(call: Any) -> Call:
    """One message each way on the open bidirectional stream `call`."""

    async def ping(i: int) -> None:
        await call.write(MESSAGE)
        await call.read()

    return ping


async def bare_kinds(kinds: list[str], rate: float, count: int) -> dict[str, Any]:
    port = free_port()
    command = [sys.executable, __file__, "--bare-serve", str(port), str(rate), str(count)]
    process = await asyncio.create_subprocess_exec(*command)
    out: dict[str, Any] = {}
    try:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        await asyncio.wait_for(channel.channel_ready(), 30)
        unary = channel.unary_unary("/bare.T/U")
        pids = {"client": os.getpid(), "server": process.pid}
        for _ in range(100):
            await unary(MESSAGE)
        for kind in kinds:
            if kind == "grpc_stream":
                before, n = cpu_now(pids), 0
                async for _ in channel.unary_stream("/bare.T/S")(b""):
                    n += 1
            elif kind == "grpc_bidi":
                ping = _pinger(channel.stream_stream("/bare.T/B")())
                await ping(0)
                before, n = cpu_now(pids), count
                await paced(rate, count, ping)
            else:
                before, n = cpu_now(pids), count
                await paced(rate, count, lambda i: unary(MESSAGE))
            out[kind] = {"calls": n, "cpu_us_per_call": cpu_per_call(before, pids, max(1, n))}
            print(kind, out[kind], file=sys.stderr)
        await channel.close()
    finally:
        process.kill()
        await process.wait()
    return out


# -- packetbus ------------------------------------------------------------------------


async def packetbus_kinds(kinds: list[str], rate: float, count: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="packetbus-calls-") as tmp:
        data_dir = Path(tmp) / "server"
        async with spawned_server(data_dir, None) as server:
            url = embedded_store_url(data_dir)
            pids = {"client": os.getpid(), "server": server.process.pid}
            store = local_pid(int((data_dir / "valkey.pid").read_text()), "valkey")
            if store:
                pids["store"] = store
            client = await Client.connect(server.target, timeout=30)
            topic = f"bench.{uuid.uuid4().hex[:8]}.calls"

            async def info(i: int) -> object:
                return await client.server_info()

            async def dispatch(i: int) -> object:
                return await client.dispatch_batch([fill_defaults(make_packet(topic, i))])

            async def streamed(i: int) -> object:
                return await client.dispatch(fill_defaults(make_packet(topic, i)))

            async def follow() -> None:
                async with client.subscribe(topic, start=LATEST) as subscription:
                    async for _ in subscription:
                        pass

            try:
                for kind in kinds:
                    follower = asyncio.create_task(follow()) if kind.endswith("_sub") else None
                    call = {"info": info, "dispatch": dispatch, "dispatch_sub": dispatch}.get(
                        kind, streamed
                    )
                    await paced(50, 25, call)  # warm, and the subscriber positioned
                    before, stats = cpu_now(pids), await commandstats(url)
                    await paced(rate, count, call)
                    await asyncio.sleep(0.2)  # the last delivery sent
                    after = await commandstats(url)
                    out[kind] = {
                        "calls": count,
                        "cpu_us_per_call": cpu_per_call(before, pids, count),
                        "store_commands_per_call": round(
                            sum(n - stats.get(k, 0) for k, n in after.items() if k != "info")
                            / count,
                            2,
                        ),
                        "evalsha_per_call": round(
                            (after.get("evalsha", 0) - stats.get("evalsha", 0)) / count, 2
                        ),
                        "xread_per_call": round(
                            (after.get("xread", 0) - stats.get("xread", 0)) / count, 2
                        ),
                    }
                    print(kind, out[kind], file=sys.stderr)
                    if follower is not None:
                        follower.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await follower
            finally:
                await client.close()
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    kinds = args.kinds.split(",")
    unknown = set(kinds) - set(PACKETBUS_KINDS) - set(BARE_KINDS)
    if unknown:
        raise SystemExit(f"unknown kinds: {sorted(unknown)}")
    count = max(1, round(args.rate * args.seconds))
    out: dict[str, Any] = {"rate": args.rate, "calls": count}
    mine = [k for k in kinds if k in PACKETBUS_KINDS]
    bare = [k for k in kinds if k in BARE_KINDS]
    if mine:
        out |= await packetbus_kinds(mine, args.rate, count)
    if bare:
        out |= await bare_kinds(bare, args.rate, count)
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["--bare-serve"]:
        import uvloop  # as `packetbus serve` runs

        uvloop.run(_bare_serve(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])))
        raise SystemExit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="calls per second (1000)")
    parser.add_argument("--seconds", type=float, default=4.0, help="per kind (4)")
    parser.add_argument("--kinds", default=",".join(PACKETBUS_KINDS + BARE_KINDS))
    json.dump(asyncio.run(main(parser.parse_args())), sys.stdout, indent=1)
    print()
