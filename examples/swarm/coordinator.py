"""A swarm coordinator: registers itself, shares the swarm's brief as a context document,
spawns its workers, posts tasks, waits until every task is completed, checks every answer
and every packet's chain of custody, and records the swarm's roster and a session summary.

    python examples/swarm/coordinator.py --tasks 12 --workers 2

Each worker (worker.py) is a separate process and a registered agent whose parent is the
coordinator. Prints one JSON report; exits 0 only when every task was done right and
every chain verifies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from packetbus import (
    Agent,
    Client,
    SessionSummary,
    SigningKey,
    StoredPacket,
    SwarmMember,
    SwarmRegistry,
    Task,
    verify_chain,
)
from packetbus.v1 import task_service_pb2

COORDINATOR = "coordinator"
CAPABILITY = "math"


async def coordinate(target: str | None, tasks: int, workers: int, wait: float) -> int:
    started = datetime.now(UTC)
    deadline = time.monotonic() + wait
    swarm_id = f"swarm-{uuid.uuid4().hex[:8]}"
    brief = {
        "swarm": swarm_id,
        "operation": "square",
        "queue": f"{swarm_id}.work",
        # The global context key set to "1" once every task is done: workers then stop.
        "done_key": f"{swarm_id}.done",
    }
    async with (
        await Client.connect(target, timeout=30) as client,
        client.agent(COORDINATOR, role="coordinator", ttl=10),
    ):
        await client.set_global_context(brief["done_key"], "0")
        await client.put_context(
            "swarm",
            "brief",
            json.dumps(brief).encode(),
            content_type="application/json",
            author=COORDINATOR,
        )
        spawned = [spawn(target, f"{swarm_id}.worker-{i + 1}") for i in range(workers)]
        try:
            return await run(client, brief, started, tasks, workers, deadline)
        finally:
            await client.set_global_context(brief["done_key"], "1")
            for process in spawned:
                try:
                    await asyncio.to_thread(process.wait, max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    process.kill()


def spawn(target: str | None, agent_id: str) -> subprocess.Popen[bytes]:
    """A worker process; its one-line JSON report goes to stderr, with its logs."""
    worker = Path(__file__).with_name("worker.py")
    command = [sys.executable, str(worker), "--id", agent_id, "--parent", COORDINATOR]
    command += ["--capability", CAPABILITY, *(["--target", target] if target else [])]
    return subprocess.Popen(command, stdout=sys.stderr)


async def run(
    client: Client,
    brief: dict[str, str],
    started: datetime,
    tasks: int,
    workers: int,
    deadline: float,
) -> int:
    roster = await wait_for_workers(client, brief["swarm"], workers, deadline)
    registry = SwarmRegistry(
        swarm_id=brief["swarm"],
        coordinator=COORDINATOR,
        members=[
            SwarmMember(agent_id=a.id, role=a.role, capabilities=a.capabilities) for a in roster
        ],
    )
    registry.created_at.FromDatetime(started)
    records = [(await client.put_record(registry, origin=COORDINATOR)).record]

    queue = client.task_queue(brief["queue"])
    ids = [f"{brief['swarm']}.square-{n}" for n in range(tasks)]
    for n, task_id in enumerate(ids):
        task = Task(id=task_id, description=f"square {n}", required_capability=CAPABILITY)
        task.payload.update({"n": n})
        await queue.post(task, origin=COORDINATOR)

    while True:
        completed = await queue.tasks(task_service_pb2.TASK_STATUS_COMPLETED)
        if len(completed) == tasks:
            break
        if time.monotonic() > deadline:
            print(json.dumps({"ok": False, "error": f"{len(completed)}/{tasks} tasks completed"}))
            return 1
        await asyncio.sleep(0.2)

    report = await check(client, brief["queue"], ids, records)
    summary = SessionSummary(
        label="example-swarm",
        date=started.date().isoformat(),
        agents=[COORDINATOR, *(a.id for a in roster)],
        metrics={
            "tasks_completed": float(len(completed)),
            "chains_verified": float(report["chains_verified"]),
        },
        summary=f"{tasks} squares computed by {len(roster)} workers",
    )
    summary.started_at.FromDatetime(started)
    summary.ended_at.FromDatetime(datetime.now(UTC))
    record = await client.put_record(summary, origin=COORDINATOR)
    if chain_verifies(record.record, {k.key_id: k for k in await client.signing_keys()}):
        report["chains_verified"] += 1
    else:
        report["chains_failed"].append(record.record_id)
        report["ok"] = False
    report |= {
        "swarm": brief["swarm"],
        "workers": [a.id for a in roster],
        "session_record": record.record_id,
    }
    print(json.dumps(report))
    return 0 if report["ok"] else 1


async def wait_for_workers(
    client: Client, swarm: str, workers: int, deadline: float
) -> list[Agent]:
    """This swarm's live workers, once all of them have joined."""
    while True:
        live = [
            a
            for a in await client.list_agents(parent_id=COORDINATOR, liveness="live")
            if a.id.startswith(f"{swarm}.")
        ]
        if len(live) >= workers or time.monotonic() > deadline:
            return live
        await asyncio.sleep(0.2)


async def check(
    client: Client, queue_name: str, ids: Sequence[str], records: Sequence[StoredPacket]
) -> dict[str, Any]:
    """Every answer right, and the chain of every task, finding and record verified here,
    against the published signing keys (the server is not trusted to say so)."""
    queue = client.task_queue(queue_name)
    keys = {k.key_id: k for k in await client.signing_keys()}
    wrong: list[str] = []
    unverified: list[str] = []
    packets = list(records)
    for n, task_id in enumerate(ids):
        answers = [r.result["answer"] for r in await queue.results(task_id) if r.completed]
        if answers != [n * n]:
            wrong.append(task_id)
        packets += [(await queue.get(task_id)).packet, *await client.list_findings(task_id)]
    for stored in packets:
        if not chain_verifies(stored, keys):
            unverified.append(stored.packet.tracking_id)
    return {
        "ok": not wrong and not unverified,
        "tasks": len(ids),
        "wrong_answers": wrong,
        "chains_verified": len(packets) - len(unverified),
        "chains_failed": unverified,
    }


def chain_verifies(stored: StoredPacket, keys: dict[str, SigningKey]) -> bool:
    """Every entry of the packet's chain, and the server's signed head over its end."""
    return verify_chain(
        tracking_id=stored.packet.tracking_id,
        content=stored.content,
        chain=stored.packet.chain_of_custody,
        keys=keys,
        head=stored.custody_head,
    ).verified


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--target", help="the server (default: $PACKETBUS_TARGET, else 127.0.0.1:50051)"
    )
    parser.add_argument("--tasks", type=int, default=12, help="tasks to post")
    parser.add_argument("--workers", type=int, default=2, help="worker processes to spawn")
    parser.add_argument("--wait", type=float, default=120, help="seconds before giving up")
    args = parser.parse_args(argv)
    return asyncio.run(coordinate(args.target, args.tasks, args.workers, args.wait))


if __name__ == "__main__":
    sys.exit(main())
