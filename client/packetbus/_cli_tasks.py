"""``packetbus tasks``: task queues from the command line."""

from __future__ import annotations

import argparse
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from packetbus.v1 import contents_pb2
from packetbus.v1 import task_service_pb2 as pb

from ._cli_args import ATTEMPTS, COUNT, SECONDS, UINT64, fail, integer
from ._cli_json import json_line, json_pretty
from ._client import Client
from ._errors import PacketbusError
from ._tasks import ClaimedTask

Command = Callable[[Client, argparse.Namespace], Awaitable[int]]
_STATUSES = ("queued", "claimed", "completed", "carceled")


def _object(text: str | None, flag: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{flag} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object")
    return value


def add_parsers(commands: Any) -> None:
    tasks = commands.add_parser("tasks", help="task queues: post, claim, settle, inspect")
    sub = tasks.add_subparsers(dest="tasks_command", required=True, metavar="TASKS_COMMAND")

    post = sub.add_parser("post", help="post a task; prints its state as JSON")
    post.add_argument("queue", metavar="QUEUE")
    post.add_argument("--id", required=True, help="the task's id, unique in the queue")
    post.add_argument("--origin", required=True, help="the posting agent's id")
    post.add_argument("--description", default="")
    post.add_argument("--type", default="")
    post.add_argument(
        "--priority", type=integer(-1000, 1000), default=0, help="-1000..1000, higher first"
    )
    post.add_argument("--capability", default="", help="only workers with it may claim it")
    post.add_argument("--max-attempts", type=ATTEMPTS, default=0, help="failures before the carcel")
    post.add_argument("--payload", metavar="JSON", help="the task's payload, a JSON object")

    claim = sub.add_parser("claim", help="claim a task; prints it, or exits 1 if none")
    claim.add_argument("queue", metavar="QUEUE")
    claim.add_argument("--worker", required=True)
    claim.add_argument("--capability", action="append", default=[], dest="capabilities")
    claim.add_argument("--lease", type=SECONDS, default=0, help="seconds (default 30)")
    claim.add_argument(
        "--request-id",
        default="",
        help="UUID, the claim's idempotency key: the same command again answers the task "
        "it claimed while that claim holds, instead of claiming another (default: a new one)",
    )

    for name, text in (
        ("complete", "complete a claimed task"),
        ("fail", "report a failed attempt (retried, or carceled after the last)"),
        ("release", "give a claimed task back to the queue"),
        ("heartbeat", "renew a claimed task's lease"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("queue", metavar="QUEUE")
        cmd.add_argument("task_id", metavar="TASK_ID")
        cmd.add_argument(
            "--token", type=integer(0, UINT64), required=True, help="the claim's fencing token"
        )
        if name == "complete":
            cmd.add_argument("--result", metavar="JSON", help="the result, a JSON object")
            cmd.add_argument("--summary", default="")
        elif name == "fail":
            cmd.add_argument("--error", required=True)
        elif name == "release":
            cmd.add_argument("--reason", default="")

    for name, text in (("get", "print a task's state"), ("results", "one JSON line per attempt")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("queue", metavar="QUEUE")
        cmd.add_argument("task_id", metavar="TASK_ID")
    listing = sub.add_parser("list", help="one JSON line per task, first posted first")
    listing.add_argument("queue", metavar="QUEUE")
    listing.add_argument("--status", choices=_STATUSES)
    queues = sub.add_parser(
        "queues", help="one JSON line per task queue (name order), its tasks counted by status"
    )
    queues.add_argument("--prefix", default="", help="only queues whose name starts with it")
    watch = sub.add_parser("watch", help="one JSON line per status change, as they happen")
    watch.add_argument("queue", metavar="QUEUE")
    watch.add_argument("--after", default="", metavar="CURSOR", help="resume after a cursor")
    watch.add_argument("--count", type=COUNT, default=0, help="stop after N events")


async def _tasks(client: Client, args: argparse.Namespace) -> int:
    try:
        return await _run(client, args)
    except ValueError as exc:  # a malformed --payload or --result
        return fail(str(exc), 2)


async def _run(client: Client, args: argparse.Namespace) -> int:
    t = args.timeout
    command = args.tasks_command
    if command == "queues":
        async for summary in client.list_task_queues(args.prefix, timeout=t):
            print(json_line(summary))
        return 0
    queue = client.task_queue(args.queue)
    if command == "post":
        task = contents_pb2.Task(
            id=args.id,
            description=args.description,
            type=args.type,
            priority=args.priority,
            required_capability=args.capability,
        )
        payload = _object(args.payload, "--payload")
        if payload:
            task.payload.update(payload)
        state = await queue.post(
            task, origin=args.origin, max_attempts=args.max_attempts, timeout=t
        )
        print(json_pretty(state))
    elif command == "claim":
        request_id = args.request_id or str(uuid.uuid4())
        try:
            claimed = await queue.claim(
                args.worker,
                capabilities=args.capabilities,
                lease_seconds=args.lease,
                request_id=request_id,
                timeout=t,
            )
        except PacketbusError as exc:
            if not exc.outcome_unknown:
                raise
            return fail(
                f"{exc.code.name}: {exc.message} (a task may have been claimed: run the "
                f"command again with --request-id {request_id} to find out)",
                status=exc.code.name,
            )
        if claimed is None:
            print("{}")
            return 1
        print(json_pretty(claimed.state))
    elif command in ("complete", "fail", "release", "heartbeat"):
        held = ClaimedTask(
            queue,
            pb.TaskState(queue=args.queue, task_id=args.task_id, fencing_token=args.token),
        )
        if command == "complete":
            await held.complete(_object(args.result, "--result"), summary=args.summary, timeout=t)
        elif command == "fail":
            print(json_pretty(await held.fail(args.error, timeout=t)))
        elif command == "release":
            await held.release(args.reason, timeout=t)
        else:
            await held.heartbeat(timeout=t)
            print(json_pretty(held.state.lease_expires_at))
    elif command == "get":
        print(json_pretty(await queue.get(args.task_id, timeout=t)))
    elif command == "results":
        for result in await queue.results(args.task_id, timeout=t):
            print(json_line(result))
    elif command == "list":
        status = (
            pb.TaskStatus.Value(f"TASK_STATUS_{args.status.upper()}")
            if args.status
            else pb.TASK_STATUS_UNSPECIFIED
        )
        for state in await queue.tasks(status, timeout=t):
            print(json_line(state))
    else:
        seen = 0
        async for event in queue.watch(after_cursor=args.after):
            print(json_line(event), flush=True)
            seen += 1
            if args.count and seen >= args.count:
                break
    return 0


COMMANDS: dict[str, Command] = {"tasks": _tasks}
