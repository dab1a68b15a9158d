"""A swarm worker: registers itself, reads the swarm's brief, then claims tasks it can do,
posts a finding and completes each, until the coordinator says the swarm is done.

    python examples/swarm/worker.py --id worker-1 --capability math

The coordinator (coordinator.py) spawns its workers; the brief it shares names the task
queue and the global context key that says the swarm is done.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from packetbus import Client, Finding, PacketbusError, new_entry


async def work(target: str | None, agent_id: str, capabilities: Sequence[str], parent: str) -> int:
    async with (
        await Client.connect(target, timeout=30) as client,
        client.agent(
            agent_id, role="worker", capabilities=capabilities, parent_id=parent, ttl=10
        ) as me,
    ):
        brief = await wait_for_brief(client)
        queue = client.task_queue(brief["queue"])
        done = 0
        while True:
            claimed = await queue.claim(agent_id, capabilities=capabilities, lease_seconds=30)
            if claimed is None:
                if await client.get_global_context(brief["done_key"]) == "1":
                    break
                await asyncio.sleep(0.2)
                continue
            await me.set_state("busy")
            n = int(claimed.task.payload.fields["n"].number_value)
            answer = n * n if brief["operation"] == "square" else n
            await client.append_trace(
                claimed.task_id, agent_id, new_entry(f"computing {brief['operation']} of {n}")
            )
            await client.post_finding(
                Finding(
                    id=f"{claimed.task_id}.{agent_id}",
                    task_id=claimed.task_id,
                    worker_id=agent_id,
                    claim=f"{brief['operation']}({n}) = {answer}",
                    subject=f"{brief['operation']}({n})",
                    confidence=0.95,
                ),
                origin=agent_id,
            )
            try:
                await claimed.complete({"answer": answer}, summary=f"{n} -> {answer}")
            except PacketbusError as exc:
                # The lease ran out and another worker holds the task now: its answer counts.
                print(f"{agent_id}: lost {claimed.task_id}: {exc.message}", file=sys.stderr)
                continue
            done += 1
            await me.set_state("idle")
        # One write for the line and its newline: print() makes two, and unbuffered
        # (PYTHONUNBUFFERED) the workers sharing the coordinator's stderr interleave them.
        sys.stdout.write(json.dumps({"worker": agent_id, "completed": done}) + "\n")
    return 0


async def wait_for_brief(client: Client) -> dict[str, str]:
    """The brief the coordinator shares as context document swarm/brief."""
    while True:
        try:
            value = await client.get_context("swarm", "brief")
        except PacketbusError as exc:
            if exc.code.name != "NOT_FOUND":
                raise
            await asyncio.sleep(0.2)
            continue
        brief: dict[str, str] = json.loads(value.data)
        return brief


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--target", help="the server (default: $PACKETBUS_TARGET, else 127.0.0.1:50051)"
    )
    parser.add_argument("--id", required=True, help="this worker's agent id")
    parser.add_argument("--capability", action="append", default=[], help="what it can do")
    parser.add_argument("--parent", default="coordinator", help="the agent that spawned it")
    args = parser.parse_args(argv)
    return asyncio.run(work(args.target, args.id, args.capability, args.parent))


if __name__ == "__main__":
    sys.exit(main())
