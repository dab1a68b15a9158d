"""The console's task queue and findings routes (issue 19), without authentication.

The session's packetbus server, a real `packetbus console` process, and httpx
against its API: queues counted by status and priority (and pushed live as they
change), a queue's tasks by status, a task's claims, results and failures, a
queue's task events relayed as SSE with resume, a task's findings with the
conflicts between them and the escalations carrying them, and bad input answered
as JSON 4xx, never a 500. (Who sees which queue: test_console_queues_auth.py.)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import packetbus
from tests._console import output, sse_events, start_console, stop
from tests.conftest import unique

# The storage behind these routes is the RPCs' (tested on every backend there).
pytestmark = pytest.mark.one_backend


@pytest.fixture(scope="module")
def console(target: str) -> Iterator[str]:
    process, url = start_console(target)
    yield url
    stop(process)
    assert "Traceback" not in output(url), output(url)


@pytest.fixture
async def http(console: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=console, timeout=20) as client:
        yield client


def _task(task_id: str, priority: int = 0) -> packetbus.Task:
    return packetbus.Task(id=task_id, description=task_id, priority=priority)


def _path(queue: str, *rest: str) -> str:
    return "/".join(["/api/queues", quote(queue, safe="/"), *(quote(r, safe="") for r in rest)])


async def _next_snapshot(events: AsyncIterator[tuple[str, str, dict[str, Any]]]) -> dict[str, Any]:
    async with asyncio.timeout(15):
        _, event, data = await anext(events)
    assert event == "snapshot"
    return data


async def test_queues_are_counted_by_status_and_priority_and_pushed_live(
    http: httpx.AsyncClient, client: packetbus.Client
) -> None:
    prefix = unique("console-queues") + "/"  # a queue name may hold "/"
    jobs = client.task_queue(prefix + "jobs")
    await jobs.post(_task("a", 5), origin="planner")
    await jobs.post(_task("b", 1), origin="planner")
    await client.task_queue(prefix + "other").post(_task("c"), origin="planner")
    claimed = await jobs.claim("w1", lease_seconds=60)
    assert claimed is not None
    await claimed.complete({"ok": True})

    answer = await http.get("/api/queues", params={"prefix": prefix})
    assert answer.status_code == 200
    listed = answer.json()
    assert listed["truncated"] is False
    assert [q["queue"] for q in listed["queues"]] == [prefix + "jobs", prefix + "other"]
    first = listed["queues"][0]
    assert first["tasks"] == 2
    assert first["counts"] == [
        {"status": "TASK_STATUS_QUEUED", "priority": 1, "tasks": 1},
        {"status": "TASK_STATUS_COMPLETED", "priority": 5, "tasks": 1},
    ]
    assert first["byStatus"] == {
        "TASK_STATUS_QUEUED": 1,
        "TASK_STATUS_CLAIMED": 0,
        "TASK_STATUS_COMPLETED": 1,
        "TASK_STATUS_CARCELED": 0,
    }
    assert first["unclassified"] == 0
    limited = (await http.get("/api/queues", params={"prefix": prefix, "limit": 1})).json()
    assert ([q["queue"] for q in limited["queues"]], limited["truncated"]) == (
        [prefix + "jobs"],
        True,
    )

    params = {"prefix": prefix + "jobs", "interval": "0.25"}
    async with http.stream("GET", "/api/queues/events", params=params) as stream:
        assert stream.status_code == 200
        events = aiter(sse_events(stream))
        assert (await _next_snapshot(events))["queues"][0]["byStatus"]["TASK_STATUS_CLAIMED"] == 0
        await jobs.claim("w2", lease_seconds=60)
        changed = await _next_snapshot(events)
    assert changed["queues"][0]["byStatus"]["TASK_STATUS_CLAIMED"] == 1
    assert changed["queues"][0]["byStatus"]["TASK_STATUS_QUEUED"] == 0


async def test_a_queues_tasks_by_status_and_a_tasks_claims_results_and_failures(
    http: httpx.AsyncClient, client: packetbus.Client
) -> None:
    queue_name = unique("console-tasks") + "/q"
    queue = client.task_queue(queue_name)
    await queue.post(_task("t-1", 3), origin="planner")
    await queue.post(_task("t-2"), origin="planner")
    first = await queue.claim("w1", lease_seconds=60)
    assert first is not None
    assert first.task_id == "t-1"
    await first.fail("network down")
    second = await queue.claim("w2", lease_seconds=60)
    assert second is not None
    assert second.task_id == "t-1"
    await second.complete({"pages": 3}, summary="done")

    everything = (await http.get(_path(queue_name, "tasks"))).json()
    assert [t["taskId"] for t in everything["tasks"]] == ["t-1", "t-2"]
    assert everything["nextPageToken"] == ""
    assert "packet" not in everything["tasks"][0]  # the task's own view carries it
    done = (await http.get(_path(queue_name, "tasks"), params={"status": "completed"})).json()
    [state] = done["tasks"]
    assert (state["taskId"], state["status"], state["claims"], state["failures"]) == (
        "t-1",
        "TASK_STATUS_COMPLETED",
        2,
        1,
    )
    queued = (await http.get(_path(queue_name, "tasks"), params={"status": "queued"})).json()
    assert [t["taskId"] for t in queued["tasks"]] == ["t-2"]

    view = (await http.get(_path(queue_name, "tasks", "t-1"))).json()
    assert view["task"]["status"] == "TASK_STATUS_COMPLETED"
    assert view["task"]["packet"]["packet"]["task"]["id"] == "t-1"
    results = [(r["worker"], r["completed"], r["error"], r["summary"]) for r in view["results"]]
    assert results == [("w1", False, "network down", ""), ("w2", True, "", "done")]
    assert view["results"][1]["result"] == {"pages": 3}
    settled = [
        (h["action"], h["counterpart"])
        for h in view["history"]
        if h["action"] in ("claimed", "failed", "completed")
    ]
    assert settled == [
        ("claimed", f"queue:{queue_name} worker:w1"),
        ("failed", f"queue:{queue_name} worker:w1"),
        ("claimed", f"queue:{queue_name} worker:w2"),
        ("completed", f"queue:{queue_name} worker:w2"),
    ]
    assert [h["sequence"] for h in view["history"]] == list(range(len(view["history"])))

    missing = await http.get(_path(queue_name, "tasks", "t-404"))
    assert (missing.status_code, missing.json()["code"]) == (404, "NOT_FOUND")


async def test_a_queues_task_events_stream_and_resume_after_the_last_event_id(
    http: httpx.AsyncClient, client: packetbus.Client
) -> None:
    queue_name = unique("console-watch")
    queue = client.task_queue(queue_name)
    seen: list[tuple[str, str, str]] = []
    async with http.stream("GET", _path(queue_name, "events")) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = aiter(sse_events(stream))
        start_cursor, event, data = await anext(events)
        assert (event, data) == ("start", {"cursor": start_cursor})
        await queue.post(_task("t-1"), origin="planner")
        claimed = await queue.claim("w1", lease_seconds=60)
        assert claimed is not None
        await claimed.complete({})
        async with asyncio.timeout(15):
            async for cursor, event, data in events:
                assert event == "task"
                assert cursor == data["cursor"]
                seen.append((cursor, str(data["oldStatus"]), str(data["newStatus"])))
                if data["newStatus"] == "TASK_STATUS_COMPLETED":
                    break
    assert [(o, n) for _, o, n in seen] == [
        ("TASK_STATUS_UNSPECIFIED", "TASK_STATUS_QUEUED"),
        ("TASK_STATUS_QUEUED", "TASK_STATUS_CLAIMED"),
        ("TASK_STATUS_CLAIMED", "TASK_STATUS_COMPLETED"),
    ]
    # A browser's EventSource reconnects with Last-Event-ID: exactly what followed.
    for last, expected in ((start_cursor, seen[0]), (seen[1][0], seen[2])):
        headers = {"Last-Event-ID": last}
        async with http.stream("GET", _path(queue_name, "events"), headers=headers) as resumed:
            async with asyncio.timeout(10):
                cursor, event, data = await anext(aiter(sse_events(resumed)))
        assert (cursor, event, data["oldStatus"], data["newStatus"]) == (
            expected[0],
            "task",
            expected[1],
            expected[2],
        )

    refused = await http.get(_path("no spaces allowed", "events"))
    assert (refused.status_code, refused.json()["code"]) == (400, "INVALID_ARGUMENT")


def _finding(
    task_id: str, finding_id: str, confidence: float, refutes: bool = False
) -> packetbus.Finding:
    return packetbus.Finding(
        id=finding_id,
        task_id=task_id,
        claim="the bridge is safe",
        confidence=confidence,
        refutes=refutes,
        citations=[f"https://example.org/{finding_id}"],
        worker_id="inspector",
    )


async def test_findings_with_their_conflicts_and_escalations_with_their_findings(
    http: httpx.AsyncClient, client: packetbus.Client
) -> None:
    task_id = unique("console-task")
    await client.post_finding(_finding(task_id, "f-1", 0.9), origin="inspector-1")
    await client.post_finding(_finding(task_id, "f-2", 0.8, refutes=True), origin="inspector-2")
    await client.post_finding(_finding(task_id, "f-3", 0.85), origin="inspector-3")

    view = (await http.get("/api/findings", params={"taskId": task_id})).json()
    assert view["taskId"] == task_id
    assert [f["findingId"] for f in view["findings"]] == ["f-1", "f-2", "f-3"]
    f1 = view["findings"][0]
    assert (f1["claim"], f1["confidence"], f1["origin"], f1["citations"]) == (
        "the bridge is safe",
        0.9,
        "inspector-1",
        ["https://example.org/f-1"],
    )
    pairs = [
        (
            c["firstFindingId"],
            c["secondFindingId"],
            c["reason"],
            c["first"]["findingId"],
            c["second"]["findingId"],
        )
        for c in view["conflicts"]
    ]
    assert pairs == [
        ("f-1", "f-2", "opposite claims", "f-1", "f-2"),
        ("f-2", "f-3", "opposite claims", "f-2", "f-3"),
    ]
    # A lower threshold finds confidences apart too (0.9 and 0.85 differ by 0.05).
    strict = (
        await http.get("/api/findings", params={"taskId": task_id, "threshold": "0.01"})
    ).json()
    assert ("f-1", "f-3") in [
        (c["firstFindingId"], c["secondFindingId"]) for c in strict["conflicts"]
    ]

    await client.escalate(task_id, ["f-1", "f-2"], reason="inspectors disagree", origin="lead")
    escalations = (await http.get("/api/escalations", params={"taskId": task_id})).json()
    assert escalations["truncated"] is False
    [escalation] = escalations["escalations"]
    assert (escalation["taskId"], escalation["reason"], escalation["origin"]) == (
        task_id,
        "inspectors disagree",
        "lead",
    )
    assert [(f["findingId"], f["refutes"]) for f in escalation["findings"]] == [
        ("f-1", False),
        ("f-2", True),
    ]
    everyone = (await http.get("/api/escalations")).json()["escalations"]
    assert escalation["trackingId"] in [e["trackingId"] for e in everyone]

    params = {"taskId": task_id, "interval": "0.25"}
    async with http.stream("GET", "/api/findings/events", params=params) as stream:
        events = aiter(sse_events(stream))
        assert len((await _next_snapshot(events))["findings"]) == 3
        await client.post_finding(_finding(task_id, "f-4", 0.2), origin="inspector-4")
        assert len((await _next_snapshot(events))["findings"]) == 4


@pytest.mark.parametrize(
    ("path", "params", "error"),
    [
        ("/api/queues", {"limit": "0"}, "limit must be 1-1000, not '0'"),
        ("/api/queues/q/tasks", {"status": "sleeping"}, None),
        ("/api/queues/q/tasks", {"pageToken": "forged"}, None),
        ("/api/queues/bad name/tasks", {}, None),
        ("/api/queues/q/tasks/bad id", {}, None),
        ("/api/findings", {}, "taskId is required"),
        ("/api/findings", {"taskId": "t", "threshold": "2"}, "threshold must be 0-1, not '2'"),
        ("/api/findings", {"taskId": "t", "threshold": "nan"}, "threshold must be 0-1, not 'nan'"),
        ("/api/findings", {"taskId": "bad id"}, None),
        ("/api/escalations", {"limit": "x"}, "limit must be 1-1000, not 'x'"),
        ("/api/queues/events", {"interval": "0"}, None),
        ("/api/findings/events", {}, "taskId is required"),
    ],
)
async def test_bad_input_is_a_json_400(
    http: httpx.AsyncClient, path: str, params: dict[str, str], error: str | None
) -> None:
    answer = await http.get(path, params=params)
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["code"] == "INVALID_ARGUMENT"
    if error is not None:
        assert answer.json()["error"] == error


_ROUTES = (
    "/api/queues?prefix={}&limit={}",
    "/api/queues/{}/tasks?status={}&pageToken={}",
    "/api/queues/{}/tasks/{}",
    "/api/findings?taskId={}&threshold={}",
    "/api/escalations?taskId={}&limit={}",
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(route=st.sampled_from(_ROUTES), segment=st.text(max_size=300))
async def test_arbitrary_segments_and_values_are_never_a_500(
    console: str, route: str, segment: str
) -> None:
    path = route.replace("{}", quote(segment, safe=""))
    async with httpx.AsyncClient(timeout=15) as http:
        response = await http.get(console + path)
    assert response.status_code < 500, (path, response.text)
    assert response.headers["content-type"] == "application/json"
    if response.status_code >= 400:
        assert set(json.loads(response.text)) == {"error", "code"}
