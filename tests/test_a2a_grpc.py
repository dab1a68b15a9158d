"""The A2A gateway's gRPC transport and its routing by tenant: a real `packetbus serve`,
a real `packetbus a2a serve --grpc-listen` on loopback, the unmodified a2a-sdk client
(and a2a-sdk's own generated stub where a test needs the exact status code)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import grpc
import grpc.aio
import httpx
import pytest
from a2a.client import Client as A2AClient
from a2a.client import ClientConfig, ClientFactory
from a2a.client.errors import A2AClientError
from a2a.types import a2a_pb2_grpc
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    SendMessageRequest,
    TaskPushNotificationConfig,
    TaskState,
)
from a2a.utils.constants import PROTOCOL_VERSION_CURRENT, VERSION_HEADER
from a2a.utils.errors import PushNotificationNotSupportedError, TaskNotCancelableError
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

import packetbus
from packetbus_a2a import A2AAgent, A2ARequest
from tests._a2a import answering, assert_agent_finds_the_cancel
from tests.conftest import REPO, free_port, run_cli, unique
from tests.test_a2a_gateway import responses, stop, texts, user_message

pytestmark = pytest.mark.one_backend

AGENT = unique("a2a-grpc-echo")  # the gateway's default agent
# Raw HTTP calls name the A2A version, as a2a-sdk's client does (0.3 is assumed otherwise).
VERSION = {VERSION_HEADER: PROTOCOL_VERSION_CURRENT}


@dataclass
class Gateway:
    url: str  # HTTP base URL
    grpc: str  # host:port


def start_grpc_gateway(
    target: str, *options: str, any_grpc_port: bool = False
) -> tuple[subprocess.Popen[str], Gateway]:
    """`packetbus a2a serve` with gRPC on, on loopback ports, once both listen;
    `any_grpc_port`: --grpc-listen port 0, the port read from the ready line."""
    http_port, grpc_port = free_port(), 0 if any_grpc_port else free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "packetbus._cli",
            "a2a",
            "serve",
            "--target",
            target,
            "--listen",
            f"127.0.0.1:{http_port}",
            "--grpc-listen",
            f"127.0.0.1:{grpc_port}",
            "--answer-timeout",
            "20",
            *options,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if any_grpc_port:
        grpc_port = int(line.rpartition(":")[2])
        assert grpc_port != 0
    # The one ready line, as the README quotes it.
    assert line == (
        f"packetbus a2a gateway serving on http://127.0.0.1:{http_port} "
        f"and gRPC on 127.0.0.1:{grpc_port}\n"
    ), line + process.stdout.read()
    return process, Gateway(f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}")


@pytest.fixture(scope="module")
def gateway(target: str) -> Iterator[Gateway]:
    """A gateway with gRPC on, whose default agent is AGENT."""
    process, gateway = start_grpc_gateway(target, "--default-agent", AGENT)
    yield gateway
    stop(process)  # SIGTERM drains both listeners: exit 0


@pytest.fixture
async def echo(client: packetbus.Client) -> AsyncIterator[A2AAgent]:
    """AGENT, registered and answering: status "reading", artifact "echo" (the text
    upper-cased), final message "done: <text>"."""

    async def answer(request: A2ARequest) -> None:
        await request.status("reading")
        await request.artifact("echo", request.text.upper())
        await request.finish(f"done: {request.text}")

    async with answering(client, AGENT, answer, role="echo", capabilities=["echo"]) as agent:
        yield agent


@contextlib.asynccontextmanager
async def grpc_client(card_url: str, *, streaming: bool = False) -> AsyncIterator[A2AClient]:
    """The a2a-sdk client on the card at `card_url`, choosing its gRPC interface."""
    factory = ClientFactory(
        ClientConfig(
            streaming=streaming,
            supported_protocol_bindings=["GRPC"],
            grpc_channel_factory=grpc.aio.insecure_channel,
        )
    )
    a2a = await factory.create_from_url(card_url)
    try:
        yield a2a
    finally:
        await a2a.close()


@contextlib.asynccontextmanager
async def stub(address: str) -> AsyncIterator[a2a_pb2_grpc.A2AServiceStub]:
    async with grpc.aio.insecure_channel(address) as channel:
        yield a2a_pb2_grpc.A2AServiceStub(channel)  # type: ignore[no-untyped-call]


async def test_card_lists_the_grpc_interface(gateway: Gateway, echo: A2AAgent) -> None:
    async with httpx.AsyncClient() as http:
        card = (await http.get(f"{gateway.url}/.well-known/agent-card.json")).json()
    assert [
        (i["protocolBinding"], i["url"], i.get("tenant")) for i in card["supportedInterfaces"]
    ] == [
        ("JSONRPC", f"{gateway.url}/agents/{AGENT}/", None),
        ("HTTP+JSON", f"{gateway.url}/agents/{AGENT}/rest", None),
        ("GRPC", gateway.grpc, AGENT),
    ]


async def test_grpc_health(gateway: Gateway) -> None:
    async with grpc.aio.insecure_channel(gateway.grpc) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "lf.a2a.v1.A2AService"):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_blocking_send_get_and_list_over_grpc(gateway: Gateway, echo: A2AAgent) -> None:
    async with grpc_client(gateway.url) as a2a:
        [first] = await responses(a2a, user_message("hello grpc"))
        task = first.task
        assert task.status.state == TaskState.TASK_STATE_COMPLETED
        assert texts(task.status.message) == ["done: hello grpc"]
        assert [(a.name, [p.text for p in a.parts]) for a in task.artifacts] == [
            ("echo", ["HELLO GRPC"])
        ]
        follow_up = user_message("again")
        follow_up.context_id = task.context_id
        [second] = await responses(a2a, follow_up)

        stored = await a2a.get_task(GetTaskRequest(id=task.id))
        assert stored.status.state == TaskState.TASK_STATE_COMPLETED
        assert texts(stored.status.message) == ["done: hello grpc"]
        listed = await a2a.list_tasks(ListTasksRequest(context_id=task.context_id))
        assert [t.id for t in listed.tasks] == [second.task.id, task.id]
        assert listed.total_size == 2

    # The same task over JSON-RPC: one store behind both transports.
    async with httpx.AsyncClient(headers=VERSION) as http:
        rpc = await http.post(
            f"{gateway.url}/agents/{AGENT}/",
            json={"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": task.id}},
        )
    assert rpc.json()["result"]["status"]["state"] == "TASK_STATE_COMPLETED"


async def test_streaming_send_over_grpc(gateway: Gateway, echo: A2AAgent) -> None:
    async with grpc_client(gateway.url, streaming=True) as a2a:
        events = await responses(a2a, user_message("stream me"))
    kinds = [event.WhichOneof("payload") for event in events]
    assert kinds == ["task", "status_update", "artifact_update", "status_update"]
    assert events[0].task.status.state == TaskState.TASK_STATE_SUBMITTED
    assert texts(events[1].status_update.status.message) == ["reading"]
    assert [p.text for p in events[2].artifact_update.artifact.parts] == ["STREAM ME"]
    final = events[3].status_update.status
    assert final.state == TaskState.TASK_STATE_COMPLETED
    assert texts(final.message) == ["done: stream me"]


async def test_cancel_over_grpc_reaches_the_agent(
    gateway: Gateway, client: packetbus.Client
) -> None:
    quiet = unique("a2a-grpc-quiet")  # registered, not answering yet
    await client.register_agent(quiet, role="slow", ttl=300)
    async with grpc_client(f"{gateway.url}/agents/{quiet}") as a2a:
        [response] = await responses(a2a, user_message("take your time"), return_immediately=True)
        task = response.task
        assert task.status.state == TaskState.TASK_STATE_SUBMITTED
        canceled = await a2a.cancel_task(CancelTaskRequest(id=task.id))
        assert canceled.status.state == TaskState.TASK_STATE_CANCELED
        assert (await a2a.get_task(GetTaskRequest(id=task.id))).status.state == (
            TaskState.TASK_STATE_CANCELED
        )
        with pytest.raises(TaskNotCancelableError):
            await a2a.cancel_task(CancelTaskRequest(id=task.id))

    await assert_agent_finds_the_cancel(client, quiet, task.id, "take your time")


async def test_unknown_tenant_is_not_found(gateway: Gateway, echo: A2AAgent) -> None:
    nobody = unique("nobody")
    async with stub(gateway.grpc) as a2a:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await a2a.GetTask(GetTaskRequest(id="t", tenant=nobody))
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        assert refused.value.details() == f"no agent {nobody!r} is registered"
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            async for _ in a2a.SendStreamingMessage(
                SendMessageRequest(message=user_message("hi"), tenant=nobody)
            ):
                pass
        assert streamed.value.code() == grpc.StatusCode.NOT_FOUND

    # The unmodified client, its tenant overridden by the request's: the same refusal.
    async with grpc_client(gateway.url) as client:
        with pytest.raises(A2AClientError) as raised:
            await client.get_task(GetTaskRequest(id="t", tenant=nobody))
        assert str(raised.value) == f"gRPC Error NOT_FOUND: no agent {nobody!r} is registered"


async def test_empty_tenant_goes_to_the_default_agent(
    gateway: Gateway, echo: A2AAgent, target: str
) -> None:
    async with stub(gateway.grpc) as a2a:
        answer = await a2a.SendMessage(SendMessageRequest(message=user_message("no tenant")))
        assert answer.task.status.state == TaskState.TASK_STATE_COMPLETED
        assert texts(answer.task.status.message) == ["done: no tenant"]
        # Stored as AGENT's task: found under its tenant.
        found = await a2a.GetTask(GetTaskRequest(id=answer.task.id, tenant=AGENT))
        assert found.id == answer.task.id

    # A gateway without a default agent refuses a call without a tenant.
    other, replica = start_grpc_gateway(
        target, "--grpc-public-address", "a2a.example.com:443", any_grpc_port=True
    )
    try:
        async with httpx.AsyncClient() as http:
            card = await http.get(f"{replica.url}/agents/{AGENT}/.well-known/agent-card.json")
        assert card.json()["supportedInterfaces"][2] == {
            "url": "a2a.example.com:443",
            "protocolBinding": "GRPC",
            "tenant": AGENT,
            "protocolVersion": PROTOCOL_VERSION_CURRENT,
        }
        async with stub(replica.grpc) as bare:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await bare.GetTask(GetTaskRequest(id=answer.task.id))
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND
            assert refused.value.details() == (
                "the request has no tenant and the gateway no default agent: "
                "set the tenant to the agent id"
            )
            # With the tenant, the other replica answers from the shared store.
            elsewhere = await bare.GetTask(GetTaskRequest(id=answer.task.id, tenant=AGENT))
            assert elsewhere.status.state == TaskState.TASK_STATE_COMPLETED
    finally:
        stop(other)


async def test_sigterm_drains_a_stream_under_way(target: str, client: packetbus.Client) -> None:
    quiet = unique("a2a-grpc-never")  # registered, never answering
    await client.register_agent(quiet, role="slow", ttl=300)
    process, gateway = start_grpc_gateway(target)
    async with stub(gateway.grpc) as a2a:
        stream = a2a.SendStreamingMessage(
            SendMessageRequest(message=user_message("wait"), tenant=quiet)
        )
        first = await anext(aiter(stream))
        assert first.task.status.state == TaskState.TASK_STATE_SUBMITTED
        started = time.monotonic()
        process.terminate()
        # The call gets its grace (GRPC_GRACE, 5 s), then is cancelled; exit 0.
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            async for _ in stream:
                pass
        assert ended.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
        assert await asyncio.to_thread(process.wait, 20) == 0
        assert 4 < time.monotonic() - started < 20


async def test_http_tenant_must_match_the_path(gateway: Gateway, echo: A2AAgent) -> None:
    async with grpc_client(gateway.url) as a2a:
        [done] = await responses(a2a, user_message("tenant paths"))
    task_id = done.task.id
    other = unique("other")
    base = f"{gateway.url}/agents/{AGENT}"
    async with httpx.AsyncClient(headers=VERSION) as http:
        # JSON-RPC: the params' tenant.
        rpc = await http.post(
            f"{base}/",
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "GetTask",
                "params": {"id": task_id, "tenant": other},
            },
        )
        assert rpc.status_code == 200
        error = rpc.json()["error"]
        assert error["code"] == -32602
        assert error["message"] == (
            f"tenant {other!r} is not the agent of this path ({AGENT!r}): "
            f"leave the tenant empty or make it {AGENT!r}"
        )
        same = await http.post(
            f"{base}/",
            json={
                "jsonrpc": "2.0",
                "id": 2,
                "method": "GetTask",
                "params": {"id": task_id, "tenant": AGENT},
            },
        )
        assert same.json()["result"]["id"] == task_id

        # HTTP+JSON: the binding's tenant-prefixed path, under the interface's URL.
        wrong = await http.get(f"{base}/rest/{other}/tasks/{task_id}")
        assert wrong.status_code == 400
        assert wrong.json()["error"]["status"] == "INVALID_ARGUMENT"
        assert wrong.json()["error"]["message"] == error["message"]
        right = await http.get(f"{base}/rest/{AGENT}/tasks/{task_id}")
        assert right.status_code == 200
        assert right.json()["id"] == task_id
        plain = await http.get(f"{base}/rest/tasks/{task_id}")
        assert plain.json() == right.json()


def test_cli_refuses_a_bad_grpc_listen() -> None:
    bad = run_cli("a2a", "serve", "--target", "127.0.0.1:1", "--grpc-listen", "nowhere")
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr == "packetbus: --grpc-listen 'nowhere' is not HOST:PORT\n"
    same = run_cli("a2a", "serve", "--listen", "127.0.0.1:8099", "--grpc-listen", "[::1]:8099")
    assert (same.returncode, same.stdout) == (2, "")
    assert (
        same.stderr == "packetbus: --grpc-listen '[::1]:8099' needs a port other than --listen's\n"
    )
    lone = run_cli("a2a", "serve", "--grpc-public-address", "example.com:443")
    assert (lone.returncode, lone.stdout) == (2, "")
    assert lone.stderr == "packetbus: --grpc-public-address needs --grpc-listen\n"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run_cli(
            "a2a",
            "serve",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--grpc-listen",
            f"127.0.0.1:{port}",
        )
    assert (busy.returncode, busy.stdout) == (1, "")
    assert busy.stderr == f"packetbus: cannot listen on 127.0.0.1:{port}: Address already in use\n"


async def test_push_notifications_are_unimplemented_over_grpc(
    gateway: Gateway, echo: A2AAgent
) -> None:
    # The A2A spec's code for PushNotificationNotSupportedError on gRPC, with the
    # ErrorInfo reason a2a-sdk's client maps back to that error.
    config = TaskPushNotificationConfig(
        task_id="t", url="http://127.0.0.1:9/", tenant=echo.agent_id
    )
    async with stub(gateway.grpc) as a2a:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await a2a.CreateTaskPushNotificationConfig(config)
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    status = rpc_status.from_call(refused.value)
    assert status is not None
    [detail] = status.details
    info = error_details_pb2.ErrorInfo()
    assert detail.Unpack(info)
    assert (info.reason, info.domain) == ("PUSH_NOTIFICATION_NOT_SUPPORTED", "a2a-protocol.org")
    async with grpc_client(gateway.url) as client:
        with pytest.raises(PushNotificationNotSupportedError):
            await client.create_task_push_notification_config(config)
