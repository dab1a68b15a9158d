"""Access-control benchmark: batched signed ingest with mutual TLS + authorization on,
beside the same server with both off (and a JWT bearer over TLS + authorization), in one run.

Issue 14's acceptance asks that identity at the door cost under 10% of batched ingest.
Prints one JSON document on stdout; progress and server logs go to stderr. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import sys
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_credentials import (
    AGENT_ID,
    JWT_AUDIENCE,
    JWT_ISSUER,
    SPIFFE_ID,
    Credentials,
    make_credentials,
)
from dispatch_bench import (
    BATCH,
    BATCHES_IN_FLIGHT,
    Lane,
    SpawnedServer,
    chunks,
    dispatch_calls,
    error_count,
    fresh_packets,
    local_pid,
    log,
    machine_info,
    make_packet,
    measure,
    payload_of,
    run_and_report,
    spawned_server,
    warm_up,
)

from packetbus import Client, PacketbusError, TlsSettings

ROUNDS = 5
SYSTEMS = ("open", "guarded", "token")
# grpc.StatusCode.PERMISSION_DENIED's number, as a DispatchResult's google.rpc.Status holds it.
PERMISSION_DENIED = 7
# Issue 14: "the cost should stay under 10%".
BUDGET = 0.10


def policy_text(run_id: str) -> str:
    """The `[authorization]` section: SPIFFE_ID may publish to this run's topics, and no
    more (authorization denies by default, so anything else the bench did would fail)."""
    return (
        "[authorization]\n\n"
        "[[authorization.principals]]\n"
        f'match = "{SPIFFE_ID}"\n'
        'roles = ["bench"]\n'
        f'agent_id = "{AGENT_ID}"\n\n'
        "[authorization.roles.bench]\n"
        f'grants = [{{ permissions = ["topics.publish"], resources = ["bench.{run_id}.*"] }}]\n'
    )


# -- the systems under test -----------------------------------------------------------


@dataclass(frozen=True)
class System:
    """How one server is started (`serve_args`) and how the bench connects to it."""

    name: str
    description: str
    serve_args: tuple[str, ...] = ()
    tls: TlsSettings | None = None
    token: str | None = None


def systems(creds: Credentials, policy: Path, names: Sequence[str]) -> list[System]:
    ca_only = TlsSettings(ca_file=creds.ca)
    serve_tls = ("--tls-cert", str(creds.server_cert), "--tls-key", str(creds.server_key))
    every = {
        "open": System("open", "plaintext, no authentication, no policy"),
        "guarded": System(
            "guarded",
            "mutual TLS (client certificate with a SPIFFE ID) + [authorization]",
            (*serve_tls, "--tls-client-ca", str(creds.ca), "--policy", str(policy)),
            TlsSettings(ca_file=creds.ca, cert_file=creds.client_cert, key_file=creds.client_key),
        ),
        "token": System(
            "token",
            "TLS + bearer JWT (EdDSA) + [authorization]",
            (
                *serve_tls,
                "--jwt-public-key",
                str(creds.jwt_public_key),
                "--jwt-issuer",
                JWT_ISSUER,
                "--jwt-audience",
                JWT_AUDIENCE,
                "--policy",
                str(policy),
            ),
            ca_only,
            creds.token,
        ),
    }
    return [every[name] for name in names]


@dataclass
class Running:
    system: System
    server: SpawnedServer
    lane: Lane
    rounds: list[dict[str, Any]] = field(default_factory=list)


async def start_system(stack: contextlib.AsyncExitStack, system: System, data_dir: Path) -> Running:
    """Spawn the system's server (kept up for the whole run) and connect its client."""
    server = await stack.enter_async_context(
        spawned_server(
            data_dir, None, extra_args=system.serve_args, tls=system.tls, token=system.token
        )
    )
    pids: dict[str, int | None] = {"client": os.getpid(), "server": server.process.pid}
    with contextlib.suppress(OSError, ValueError):
        pids["store"] = local_pid(int((data_dir / "valkey.pid").read_text()), "valkey")
    client = await Client.connect(server.target, tls=system.tls, token=system.token, timeout=30)
    stack.push_async_callback(client.close)
    return Running(system, server, Lane(system.name, client, pids))


async def refused_elsewhere(client: Client, run_id: str) -> dict[str, Any]:
    """Proof that authorization is on: a packet to a topic outside the grant must be
    refused (PERMISSION_DENIED in its DispatchResult), or the guarded figures measure
    a server that checks nothing."""
    topic = f"outside.{run_id}"
    check: dict[str, Any] = {"topic": topic, "expected": "PERMISSION_DENIED", "errors": 0}
    try:
        [result] = await client.dispatch_batch([make_packet(topic, 0)])
    except PacketbusError as exc:
        check |= {"errors": 1, "got": f"call failed: {exc}"}
        return check
    if result.WhichOneof("outcome") == "error" and result.error.code == PERMISSION_DENIED:
        check["got"] = "PERMISSION_DENIED"
    else:
        check |= {"errors": 1, "got": result.WhichOneof("outcome") or "nothing"}
        log(f"authorization check: a packet to {topic} was not refused")
    return check


# -- rounds and their summary ---------------------------------------------------------


async def run_rounds(
    running: Sequence[Running],
    run_id: str,
    packets: int,
    rounds: int,
    *,
    in_flight: int = BATCHES_IN_FLIGHT,
) -> None:
    """Each round measures every system once (`in_flight` dispatch_batch calls of BATCH
    packets at a time); the order rotates from round to round, so going first or last
    (a warm cache, a neighbour's burst) does not favour one system."""
    for n in range(rounds):
        order = [*running[n % len(running) :], *running[: n % len(running)]]
        for r in order:
            # Built off the clock; dispatch fills each packet's tracking id in place.
            batches = chunks(
                fresh_packets(f"bench.{run_id}.{r.system.name}.r{n + 1}", packets), BATCH
            )
            report = await measure(
                f"{r.system.name}_round_{n + 1}",
                packets,
                r.lane.pids,
                functools.partial(dispatch_calls, r.lane.client, batches, in_flight),
            )
            r.rounds.append(report | {"round": n + 1, "position": order.index(r) + 1})


def spread(values: Sequence[float], digits: int) -> dict[str, float]:
    """Median and range of `values`, rounded to `digits`; {} when there are none (a
    process whose CPU could not be read, a system with no successful round)."""
    if not values:
        return {}
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Median, min and max over the rounds of per_s, the latency figures they have and
    CPU µs per packet per process; then the rounds themselves."""
    out: dict[str, Any] = {
        key: spread([r[key] for r in runs if key in r], 3 if key.endswith("_ms") else 0)
        for key in ("per_s", "p50_ms", "p99_ms", "max_ms")
        if any(key in r for r in runs)
    }
    roles = dict.fromkeys(role for r in runs for role in r.get("cpu_us_per_packet", {}))
    out["cpu_us_per_packet"] = {
        role: spread(
            [r["cpu_us_per_packet"][role] for r in runs if role in r["cpu_us_per_packet"]], 1
        )
        for role in roles
    }
    out["rounds"] = runs
    return out


def summary(r: Running) -> dict[str, Any]:
    return {
        "description": r.system.description,
        "serve_args": list(r.system.serve_args),
        **summarize(r.rounds),
    }


def same_round_ratios(
    ours: Sequence[dict[str, Any]], peer: Sequence[dict[str, Any]], roles: Sequence[str]
) -> dict[str, dict[str, float]]:
    """`ours` over `peer`, round by round (so both saw the same moment of the machine):
    `per_s` (below 1: slower) and `cpu_<role>`, CPU µs per packet (above 1: dearer)."""
    pairs = list(zip(ours, peer, strict=True))
    out = {"per_s": spread([a["per_s"] / b["per_s"] for a, b in pairs if b["per_s"]], 3)}
    for role in roles:
        out[f"cpu_{role}"] = spread(
            [
                a["cpu_us_per_packet"][role] / b["cpu_us_per_packet"][role]
                for a, b in pairs
                if b["cpu_us_per_packet"].get(role) and role in a["cpu_us_per_packet"]
            ],
            3,
        )
    return out


def verdict(
    ratios: dict[str, dict[str, float]], budget: float = BUDGET, *, roles: Sequence[str] = ()
) -> dict[str, Any]:
    """The acceptance figures: the median same-round cost, in percent, against `budget`
    (`within_budget` None when a figure is missing: nothing to judge); throughput and
    total CPU are judged, the CPU of `roles` only reported."""
    out: dict[str, Any] = {}
    if "median" in ratios["per_s"]:
        out["throughput_cost_percent"] = round((1 - ratios["per_s"]["median"]) * 100, 1)
    for role in ("total", *roles):
        if "median" in ratios[f"cpu_{role}"]:
            out[f"cpu_{role}_cost_percent"] = round((ratios[f"cpu_{role}"]["median"] - 1) * 100, 1)
    judged = [out.get("throughput_cost_percent"), out.get("cpu_total_cost_percent")]
    out["within_budget"] = (
        all(v < budget * 100 for v in judged if v is not None) if None not in judged else None
    )
    return out


# -- main -----------------------------------------------------------------------------


async def run(args: argparse.Namespace, event_loop: str) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:12]
    # A round's packet, as dispatch_bench sizes its own (the bare packet, before custody).
    payload = payload_of(f"bench.{run_id}.guarded.r1")
    result: dict[str, Any] = {
        "run_id": run_id,
        "config": {
            "packets_per_round": args.packets,
            "rounds": args.rounds,
            "systems": args.systems,
            "batch": BATCH,
            "in_flight": BATCHES_IN_FLIGHT,
            "payload_bytes": len(payload),
            "custody_signing": "on (the server default) on every system",
            "store": "embedded Valkey per server, each its own data dir (AOF everysec)",
            "principal": SPIFFE_ID,
            "budget_percent": BUDGET * 100,
            "quick": args.quick,
        },
    }
    with tempfile.TemporaryDirectory(prefix="packetbus-access-bench-") as tmp:
        creds = make_credentials(Path(tmp))
        policy = Path(tmp) / "policy.toml"
        policy.write_text(policy_text(run_id))
        async with contextlib.AsyncExitStack() as stack:
            running = [
                await start_system(stack, system, Path(tmp) / f"data-{system.name}")
                for system in systems(creds, policy, args.systems)
            ]
            for r in running:
                await warm_up(r.lane.client, f"bench.{run_id}.{r.system.name}")
            checks = {
                r.system.name: await refused_elsewhere(r.lane.client, run_id)
                for r in running
                if r.system.name != "open"
            }
            await run_rounds(running, run_id, args.packets, args.rounds)
        result["systems"] = {r.system.name: summary(r) for r in running}
        for r in running:
            result["systems"][r.system.name]["server_exit_code"] = r.server.exit_code
    result["authorization_checks"] = checks
    by_name = {r.system.name: r for r in running}
    roles = ("total", "server", "client", "store")
    result["ratios_over_open"] = {
        name: same_round_ratios(r.rounds, by_name["open"].rounds, roles)
        for name, r in by_name.items()
        if name != "open"
    }
    result["cost"] = {name: verdict(ratios) for name, ratios in result["ratios_over_open"].items()}
    for name, cost in result["cost"].items():
        log(f"{name} over open: {cost}")
    result["machine"] = machine_info(event_loop)
    result["total_errors"] = error_count(result)
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--packets", type=int, help="packets per system per round (default 40000; quick 2000)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help=f"rounds, each measuring every system (default {ROUNDS}; quick 3)",
    )
    parser.add_argument(
        "--no-token",
        action="store_true",
        help="leave out the third server (TLS + bearer JWT + authorization)",
    )
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke test")
    args = parser.parse_args(argv)
    if args.packets is None:
        args.packets = 2000 if args.quick else 40_000
    if args.rounds is None:
        args.rounds = 3 if args.quick else ROUNDS
    if args.packets < 1 or args.rounds < 1:
        parser.error("--packets and --rounds must be positive")
    args.systems = [s for s in SYSTEMS if not (args.no_token and s == "token")]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_and_report(functools.partial(run, args), timed=True)


if __name__ == "__main__":
    sys.exit(main())
