"""Fan-out: S subscribers each reading a whole topic from its start, beside NATS JetStream
ordered consumers reading a stream of as many messages of the same bytes, in one run,
alternating systems in rounds; CPU µs per delivered packet per process from /proc.

    .venv/bin/python bench/fanout_bench.py --quick > fanout-quick.json
    .venv/bin/python bench/fanout_bench.py > fanout.json
    .venv/bin/python bench/fanout_bench.py --reference ../old-checkout > before-after.json

`--reference DIR` adds `packetbus_reference`: a second spawned server running DIR's code
(DIR/server and DIR/client first on its PYTHONPATH, this venv's libraries), so a change is
measured before and after in the same rounds. Prints one JSON document on stdout; see
bench/README.md ("Fan-out").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from access_bench import same_round_ratios, summarize
from delivery_bench import fill, run_until
from dispatch_bench import (
    Tally,
    error_count,
    find_pid,
    local_pid,
    log,
    machine_info,
    measure,
    nats_connect,
    payload_of,
    run_and_report,
    spawned_server,
)
from perf_parts import filled_stream

from packetbus import EARLIEST, Client

Step = Callable[[str], Awaitable[dict[str, Any]]]


async def all_read(subscribers: int, read: Callable[[], Awaitable[None]]) -> None:
    """`subscribers` readers at once, each `read()` until it has the whole topic."""
    done = asyncio.Event()
    finished = 0

    async def reader() -> None:
        nonlocal finished
        await read()
        finished += 1
        if finished == subscribers:
            done.set()

    await run_until(done, [reader() for _ in range(subscribers)])


async def packetbus_fanout(
    client: Client, topic: str, packets: int, subscribers: int, pids: dict[str, int | None]
) -> dict[str, Any]:
    """`packets` dispatched to `topic` off the clock, then `subscribers` subscriptions from
    EARLIEST, each until it has every packet; delivered packets counted over all of them."""
    await fill(client, topic, packets)

    async def body(tally: Tally) -> None:
        async def read() -> None:
            seen = 0
            async with client.subscribe(topic, start=EARLIEST) as packets_in:
                async for _ in packets_in:
                    seen += 1
                    tally.ok += 1
                    if seen == packets:
                        break

        await all_read(subscribers, read)

    return await measure(f"fanout_{topic}", packets * subscribers, pids, body)


async def nats_fanout(
    js: Any,
    stream: str,
    payload: bytes,
    packets: int,
    subscribers: int,
    pids: dict[str, int | None],
) -> dict[str, Any]:
    """A stream of `packets` messages filled off the clock, then `subscribers` ordered
    consumers (push, no acks, flow control: JetStream's own fan-out reader) from its start."""
    subject = f"{stream.lower()}.fanout"
    await filled_stream(js, stream, subject, payload, packets)
    try:

        async def body(tally: Tally) -> None:
            async def read() -> None:
                seen = 0
                all_in = asyncio.Event()

                async def on_message(_message: Any) -> None:
                    nonlocal seen
                    seen += 1
                    tally.ok += 1
                    if seen == packets:
                        all_in.set()

                sub = await js.subscribe(subject, cb=on_message, ordered_consumer=True)
                try:
                    await all_in.wait()
                finally:
                    await sub.unsubscribe()

            await all_read(subscribers, read)

        report = await measure(f"fanout_{stream}", packets * subscribers, pids, body)
    finally:
        await js.delete_stream(stream)
    return report | {"consumer": "ordered push consumer"}


async def run_rounds(steps: dict[str, Step], rounds: int) -> dict[str, list[dict[str, Any]]]:
    """Every step once a round, the order rotated from round to round."""
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in steps}
    for n in range(rounds):
        log(f"round {n + 1} of {rounds}")
        names = list(steps)
        order = names[n % len(names) :] + names[: n % len(names)]
        for position, name in enumerate(order, 1):
            report = await steps[name](f"{name}.r{n + 1}")
            out[name].append(report | {"round": n + 1, "position": position})
    return out


def packetbus_step(
    client: Client, run_id: str, packets: int, subscribers: int, pids: dict[str, int | None]
) -> Step:
    def step(label: str) -> Awaitable[dict[str, Any]]:
        return packetbus_fanout(client, f"bench.{run_id}.{label}", packets, subscribers, pids)

    return step


def nats_step(
    js: Any,
    run_id: str,
    payload: bytes,
    packets: int,
    subscribers: int,
    pids: dict[str, int | None],
) -> Step:
    def step(label: str) -> Awaitable[dict[str, Any]]:
        stream = f"FAN_{run_id}_{label.replace('.', '_')}"
        return nats_fanout(js, stream, payload, packets, subscribers, pids)

    return step


async def run(args: argparse.Namespace, event_loop: str) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    payload = payload_of(f"bench.{run_id}")
    result: dict[str, Any] = {
        "config": {
            "rounds": args.rounds,
            "packets": args.packets,
            "subscribers": args.subscribers,
            "payload_bytes": len(payload),
            "reference": str(args.reference) if args.reference else None,
            "quick": args.quick,
        }
    }
    steps: dict[str, Step] = {}
    with tempfile.TemporaryDirectory(prefix="packetbus-fanout-") as tmp:
        async with contextlib.AsyncExitStack() as stack:
            servers: dict[str, dict[str, str] | None] = {"packetbus": None}
            if args.reference:
                ref = args.reference
                path = os.pathsep.join([str(ref / "server"), str(ref / "client")])
                servers["packetbus_reference"] = {"PYTHONPATH": path}
            for name, env in servers.items():
                data_dir = Path(tmp) / name
                server = await stack.enter_async_context(spawned_server(data_dir, None, env=env))
                pids: dict[str, int | None] = {"client": os.getpid(), "server": server.process.pid}
                with contextlib.suppress(OSError, ValueError):
                    pids["store"] = local_pid(int((data_dir / "valkey.pid").read_text()), "valkey")
                client = await Client.connect(server.target, timeout=30)
                stack.push_async_callback(client.close)
                await fill(client, f"bench.{run_id}.{name}.warm", 1000)  # off the record
                for s in args.subscribers:
                    steps[f"{name}_{s}"] = packetbus_step(client, run_id, args.packets, s, pids)
            nc = await nats_connect()
            if isinstance(nc, str):
                result["nats_jetstream"] = {"skipped": nc}
            else:
                stack.push_async_callback(nc.close)
                js = nc.jetstream()
                nats_pids = {"client": os.getpid(), "nats": find_pid("nats-server")}
                for s in args.subscribers:
                    steps[f"nats_{s}"] = nats_step(js, run_id, payload, args.packets, s, nats_pids)
            by_name = await run_rounds(steps, args.rounds)
    result["systems"] = {name: summarize(runs) for name, runs in by_name.items()}
    result["ratios"] = {}
    for s in args.subscribers:
        for ours, peer in (
            (f"packetbus_{s}", f"nats_{s}"),
            (f"packetbus_{s}", f"packetbus_reference_{s}"),
        ):
            if ours in by_name and peer in by_name:
                result["ratios"][f"{ours}_over_{peer}"] = same_round_ratios(
                    by_name[ours], by_name[peer], ("server", "total")
                )
    result["machine"] = machine_info(event_loop)
    result["total_errors"] = error_count(result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, help="rounds (default 5; quick 3)")
    parser.add_argument("--packets", type=int, help="packets in the topic (default 20000)")
    parser.add_argument(
        "--subscribers", default="1,4", help="subscriber counts, comma-separated (1,4)"
    )
    parser.add_argument("--reference", help="another checkout's directory, measured beside")
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke test")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.packets = args.packets or (2000 if args.quick else 20000)
    args.subscribers = [int(s) for s in args.subscribers.split(",")]
    args.reference = Path(args.reference).resolve() if args.reference else None
    return run_and_report(lambda loop: run(args, loop))


if __name__ == "__main__":
    sys.exit(main())
