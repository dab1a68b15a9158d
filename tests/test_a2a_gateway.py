"""The A2A gateway (packetbus_a2a): a real `packetbus serve`, a real `packetbus a2a serve`
on loopback, the unmodified a2a-sdk client, and a packetbus agent using the helper."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from a2a.client import Client as A2AClient
from a2a.client import ClientConfig, ClientFactory
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    Message,
    Part,
    Role,
    SendMessageConfiguration,
    SendMessageRequest,
    StreamResponse,
    Task,
    TaskPushNotificationConfig,
    TaskState,
)
from a2a.utils.errors import PushNotificationNotSupportedError, TaskNotCancelableError

import packetbus
from packetbus import SpeechAct
from packetbus._inbox import inbox_topic
from packetbus_a2a import A2AAgent, A2ARequest
from packetbus_a2a.wire import reply_address, tracking_id
from tests._a2a import answering, assert_agent_finds_the_cancel
from tests.conftest import REPO, free_port, run_cli, serving, unique

# About the gateway and the A2A protocol; its store is ContextService's, which its own
# tests check on every backend (test_context, test_a2a_task_store).
pytestmark = pytest.mark.one_backend

AGENT = unique("a2a-summarizer")  # the gateway's default agent
CAPABILITIES = ["summarize", "shout"]


def start_gateway(target: str, *options: str) -> tuple[subprocess.Popen[str], str]:
    """`packetbus a2a serve` on a loopback port, once it serves: the process, its URL."""
    port = free_port()
    process = serving(
        [
            sys.executable,
            "-m",
            "packetbus._cli",
            "a2a",
            "serve",
            "--target",
            target,
            "--listen",
            f"127.0.0.1:{port}",
            "--answer-timeout",
            "20",
            *options,
        ],
        ready="a2a gateway serving on",
    )
    return process, f"http://127.0.0.1:{port}"


def stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        code = process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert process.stdout is not None
    assert code == 0, process.stdout.read()


@pytest.fixture(scope="module")
def gateway(target: str) -> Iterator[str]:
    """A gateway whose default agent is AGENT: its base URL."""
    process, url = start_gateway(target, "--default-agent", AGENT)
    yield url
    stop(process)


@pytest.fixture
async def summarizer(client: packetbus.Client) -> AsyncIterator[A2AAgent]:
    """AGENT, registered, answering each request through the helper: a status, an
    artifact "summary" (the text upper-cased) and the final message "done: <text>"."""

    async def answer(request: A2ARequest) -> None:
        if request.text == "please fail":
            await request.fail("cannot do that")
            return
        await request.status("reading")
        await request.artifact("summary", request.text.upper())
        await request.finish(f"done: {request.text}")

    async with answering(
        client, AGENT, answer, role="summarizer", capabilities=CAPABILITIES
    ) as agent:
        yield agent


@contextlib.asynccontextmanager
async def a2a_client(
    url: str, *, streaming: bool = False, binding: str = "JSONRPC", wait: float = 5.0
) -> AsyncIterator[A2AClient]:
    """The unmodified a2a-sdk client for the card at `url`, on `binding`, waiting up
    to `wait` seconds for a response or between a stream's events (httpx's 5 s
    by default)."""
    async with httpx.AsyncClient(timeout=wait) as http:
        factory = ClientFactory(
            ClientConfig(
                streaming=streaming, supported_protocol_bindings=[binding], httpx_client=http
            )
        )
        a2a = await factory.create_from_url(url)
        try:
            yield a2a
        finally:
            await a2a.close()


def user_message(text: str) -> Message:
    return Message(role=Role.ROLE_USER, message_id=str(uuid.uuid4()), parts=[Part(text=text)])


async def responses(
    a2a: A2AClient, message: Message, *, return_immediately: bool = False
) -> list[StreamResponse]:
    request = SendMessageRequest(
        message=message,
        configuration=SendMessageConfiguration(return_immediately=return_immediately),
    )
    return [response async for response in a2a.send_message(request)]


def texts(message: Message) -> list[str]:
    return [part.text for part in message.parts]


async def test_agent_card_from_the_registry(
    gateway: str, summarizer: A2AAgent, client: packetbus.Client
) -> None:
    async with httpx.AsyncClient() as http:
        root = await http.get(f"{gateway}/.well-known/agent-card.json")
        assert root.status_code == 200
        card = root.json()
        assert card["name"] == AGENT
        assert [skill["id"] for skill in card["skills"]] == CAPABILITIES
        assert card["skills"][0]["tags"] == ["summarize", "summarizer"]
        assert card["capabilities"] == {"streaming": True}  # push notifications absent
        assert [(i["protocolBinding"], i["url"]) for i in card["supportedInterfaces"]] == [
            ("JSONRPC", f"{gateway}/agents/{AGENT}/"),
            ("HTTP+JSON", f"{gateway}/agents/{AGENT}/rest"),
        ]
        assert root.headers["cache-control"] == "public, max-age=60"
        etag = root.headers["etag"]

        # The same card per agent; a client holding it revalidates for a 304.
        own = await http.get(f"{gateway}/agents/{AGENT}/.well-known/agent-card.json")
        assert own.json() == card
        again = await http.get(
            f"{gateway}/agents/{AGENT}/.well-known/agent-card.json",
            headers={"If-None-Match": etag},
        )
        assert again.status_code == 304
        assert again.content == b""

        # Registered again with another capability: a new card, a new ETag.
        await client.register_agent(AGENT, role="summarizer", capabilities=["translate"], ttl=300)
        changed = await http.get(
            f"{gateway}/.well-known/agent-card.json", headers={"If-None-Match": etag}
        )
        assert changed.status_code == 200
        assert [skill["id"] for skill in changed.json()["skills"]] == ["translate"]
        assert changed.headers["etag"] != etag

        missing = await http.get(f"{gateway}/agents/{unique('nobody')}/.well-known/agent-card.json")
        assert missing.status_code == 404
        nowhere = await http.post(f"{gateway}/agents/{unique('nobody')}/", json={})
        assert nowhere.status_code == 404


@pytest.mark.parametrize("binding", ["JSONRPC", "HTTP+JSON"])
async def test_blocking_send_through_the_inbox(
    gateway: str, summarizer: A2AAgent, client: packetbus.Client, binding: str
) -> None:
    async with a2a_client(gateway, binding=binding) as a2a:
        message = user_message("hello bus")
        [response] = await responses(a2a, message)
        task = response.task
        assert task.status.state == TaskState.TASK_STATE_COMPLETED
        assert texts(task.status.message) == ["done: hello bus"]
        assert [(a.name, [p.text for p in a.parts]) for a in task.artifacts] == [
            ("summary", ["HELLO BUS"])
        ]

        # GetTask answers from the store (the context service), the same task.
        stored = await a2a.get_task(GetTaskRequest(id=task.id))
        assert stored.status.state == TaskState.TASK_STATE_COMPLETED
        assert texts(stored.status.message) == ["done: hello bus"]
        assert stored.context_id == task.context_id
        document = await client.get_context("a2a-tasks", f"{AGENT}/{task.id}")
        assert document.document.version >= 2  # written with compare-and-set, version by version

    # The request is a packet in the agent's inbox, with a verified custody chain.
    request_id = tracking_id(task.id, message.message_id)
    verdict = await client.verify_custody(request_id)
    assert verdict.verified
    request = verdict.packet.packet
    assert request.topic == inbox_topic(AGENT)
    assert request.speech_act == SpeechAct.SPEECH_ACT_REQUEST
    assert request.origin == reply_address(task.id)
    assert request.conversation_id == task.context_id
    assert request.reply_with == task.id
    assert request.protocol == "a2a"
    assert request.data.fields["text"].string_value == "hello bus"

    # The agent's answers: three packets in reply, each with a verified chain too.
    answers = []
    async with client.subscribe(
        inbox_topic(reply_address(task.id)), start=packetbus.EARLIEST
    ) as stream:
        async for stored_answer in stream:
            answers.append(stored_answer.packet)
            if len(answers) == 3:
                break
    assert [(a.in_reply_to, a.origin, a.data.fields["a2a"].string_value) for a in answers] == [
        (task.id, AGENT, "status"),
        (task.id, AGENT, "artifact"),
        (task.id, AGENT, "final"),
    ]
    for answer in answers:
        assert (await client.verify_custody(answer.tracking_id)).verified


async def test_tasks_answer_on_another_replica(
    gateway: str, summarizer: A2AAgent, target: str
) -> None:
    async with a2a_client(gateway) as a2a:
        [first] = await responses(a2a, user_message("one"))
        follow_up = user_message("two")
        follow_up.context_id = first.task.context_id
        [second] = await responses(a2a, follow_up)
    assert second.task.context_id == first.task.context_id
    assert second.task.id != first.task.id

    other, url = start_gateway(target)  # another replica, no default agent
    try:
        async with a2a_client(f"{url}/agents/{AGENT}") as elsewhere:
            stored = await elsewhere.get_task(GetTaskRequest(id=first.task.id))
            assert stored.status.state == TaskState.TASK_STATE_COMPLETED
            assert texts(stored.status.message) == ["done: one"]
            listed = await elsewhere.list_tasks(ListTasksRequest(context_id=first.task.context_id))
            assert [t.id for t in listed.tasks] == [second.task.id, first.task.id]
            assert listed.total_size == 2
            assert [t.status.state for t in listed.tasks] == [TaskState.TASK_STATE_COMPLETED] * 2
    finally:
        stop(other)


async def test_agent_down_answers_when_it_comes_back(
    gateway: str, client: packetbus.Client
) -> None:
    late = unique("a2a-late")
    await client.register_agent(late, role="late", ttl=300)
    async with a2a_client(f"{gateway}/agents/{late}") as a2a:
        [response] = await responses(a2a, user_message("are you there"), return_immediately=True)
        task_id = response.task.id
        assert response.task.status.state == TaskState.TASK_STATE_SUBMITTED
        await asyncio.sleep(1)  # nobody reads the inbox meanwhile
        assert (await a2a.get_task(GetTaskRequest(id=task_id))).status.state == (
            TaskState.TASK_STATE_SUBMITTED
        )

        # The agent starts: the request waited in its inbox.
        async with await A2AAgent.open(client, late) as agent:
            request = await asyncio.wait_for(anext(aiter(agent)), 10)
            assert request.task_id == task_id
            await request.finish("here now")
        async with asyncio.timeout(10):
            while True:
                task = await a2a.get_task(GetTaskRequest(id=task_id))
                if task.status.state != TaskState.TASK_STATE_SUBMITTED:
                    break
                await asyncio.sleep(0.1)
        assert task.status.state == TaskState.TASK_STATE_COMPLETED
        assert texts(task.status.message) == ["here now"]


async def test_failure_answer_fails_the_task(gateway: str, summarizer: A2AAgent) -> None:
    async with a2a_client(gateway) as a2a:
        [response] = await responses(a2a, user_message("please fail"))
        assert response.task.status.state == TaskState.TASK_STATE_FAILED
        assert texts(response.task.status.message) == ["cannot do that"]


@pytest.mark.parametrize("binding", ["JSONRPC", "HTTP+JSON"])
async def test_streaming_send(gateway: str, summarizer: A2AAgent, binding: str) -> None:
    async with a2a_client(gateway, streaming=True, binding=binding) as a2a:
        events = await responses(a2a, user_message("stream me"))
    kinds = [event.WhichOneof("payload") for event in events]
    assert kinds == ["task", "status_update", "artifact_update", "status_update"]
    assert events[0].task.status.state == TaskState.TASK_STATE_SUBMITTED
    working, artifact, final = events[1].status_update, events[2].artifact_update, events[3]
    assert working.status.state == TaskState.TASK_STATE_WORKING
    assert texts(working.status.message) == ["reading"]
    assert artifact.artifact.name == "summary"
    assert [p.text for p in artifact.artifact.parts] == ["STREAM ME"]
    assert final.status_update.status.state == TaskState.TASK_STATE_COMPLETED
    assert texts(final.status_update.status.message) == ["done: stream me"]


async def test_cancel_reaches_the_agent(gateway: str, client: packetbus.Client) -> None:
    # An agent that is registered but does not answer yet.
    quiet = unique("a2a-quiet")
    await client.register_agent(quiet, role="slow", ttl=300)
    async with a2a_client(f"{gateway}/agents/{quiet}") as a2a:
        [response] = await responses(a2a, user_message("take your time"), return_immediately=True)
        task: Task = response.task
        assert task.status.state == TaskState.TASK_STATE_SUBMITTED
        canceled = await a2a.cancel_task(CancelTaskRequest(id=task.id))
        assert canceled.status.state == TaskState.TASK_STATE_CANCELED
        assert (await a2a.get_task(GetTaskRequest(id=task.id))).status.state == (
            TaskState.TASK_STATE_CANCELED
        )
        with pytest.raises(TaskNotCancelableError):  # a canceled task cannot be canceled again
            await a2a.cancel_task(CancelTaskRequest(id=task.id))

    # The agent comes up and finds the request, then the CANCEL for it.
    await assert_agent_finds_the_cancel(client, quiet, task.id, "take your time")


async def test_push_notifications_are_refused(gateway: str, summarizer: A2AAgent) -> None:
    async with a2a_client(gateway) as a2a:
        [response] = await responses(a2a, user_message("hi"))
        config = TaskPushNotificationConfig(task_id=response.task.id, url="http://127.0.0.1:9/")
        with pytest.raises(PushNotificationNotSupportedError):
            await a2a.create_task_push_notification_config(config)


def test_cli_refuses_bad_input() -> None:
    bad = run_cli("a2a", "serve", "--target", "127.0.0.1:1", "--listen", "nowhere")
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr == "packetbus: --listen 'nowhere' is not HOST:PORT\n"
    unknown = run_cli("a2a", "serve", "--listen", "127.0.0.1:0")
    assert (unknown.returncode, unknown.stdout) == (2, "")
    assert unknown.stderr == (
        "packetbus: --listen port 0 needs --public-url: agent cards must name the real port\n"
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run_cli("a2a", "serve", "--listen", f"127.0.0.1:{port}")
    assert (busy.returncode, busy.stdout) == (1, "")
    assert busy.stderr == f"packetbus: cannot listen on 127.0.0.1:{port}: Address already in use\n"


def test_cli_without_a2a_sdk_names_the_extra() -> None:
    # a2a-sdk made unimportable in this process only: what a plain install sees.
    code = (
        "import sys; sys.modules['a2a'] = None; from packetbus._cli import main; "
        "sys.exit(main(['a2a', 'serve', '--listen', '127.0.0.1:' + sys.argv[1]]))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(free_port())],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (run.returncode, run.stdout) == (1, "")
    assert run.stderr == (
        "packetbus: the A2A gateway needs a2a-sdk: pip install 'packetbus[a2a]' "
        "(a2a is not installed)\n"
    )
