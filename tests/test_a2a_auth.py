"""A2A credentials -> packetbus principals and task ownership (issue 18; pages: test_a2a_task_pages).

A real packetbus server authenticating real JWTs (Ed25519, a JWKS file) and
authorizing by a policy file, a real `packetbus a2a serve` process on loopback (its
own token: PACKETBUS_TOKEN; HTTP and gRPC), the unmodified a2a-sdk client over
HTTP and gRPC (a2a-sdk's generated stub where a test needs the exact status code),
and the packetbus agent answering through `A2AAgent`.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator

import grpc
import grpc.aio
import httpx
import pytest
from a2a.client import Client as A2AClient
from a2a.client import ClientCallContext, ClientConfig, ClientFactory
from a2a.client.auth import AuthInterceptor, CredentialService
from a2a.client.interceptors import AfterArgs, BeforeArgs, ClientCallInterceptor
from a2a.types import a2a_pb2_grpc
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    SubscribeToTaskRequest,
    Task,
    TaskState,
)
from a2a.utils.errors import TaskNotFoundError

import packetbus
from packetbus import PacketbusError
from packetbus._inbox import inbox_topic
from packetbus.v1 import custody_pb2, packet_service_pb2
from packetbus_a2a import A2AAgent, A2ARequest
from packetbus_a2a.task_store import SCOPE, owner_key
from packetbus_server import RunningServer
from tests._a2a import answering
from tests._identities import Issuer, guarded_fixtures, spiffe
from tests.conftest import free_port, new_packet, run_cli, serving, unique

# About the gateway's credentials, not storage: one backend (see conftest).
pytestmark = pytest.mark.one_backend

AGENT = unique("a2a-secured")
GATEWAY = spiffe("a2a-gateway")  # the gateway's own principal: reads the registry
ALICE, BOB = spiffe("alice"), spiffe("bob")
CAROL = spiffe("carol")  # everything alice has but sending to the agent
A2A_CALLER = [
    ("agents.act_for", "a2a*"),  # origins a2a.task.<id>, task documents' author
    ("context.read", SCOPE),
    ("context.write", SCOPE),
    ("topics.subscribe", inbox_topic("a2a.task.x")[:-1] + "*"),  # the task's answers
]
# The gateway's bookkeeping: task driver leases, task event topics and their documents.
GATEWAY_OWN = [
    ("context.read", "a2a-drivers"),
    ("context.write", "a2a-drivers"),
    ("context.read", "a2a-events"),
    ("context.write", "a2a-events"),
    ("topics.publish", "a2a.events.*"),
    ("topics.subscribe", "a2a.events.*"),
]
GRANTS = {
    # Registry reads, bookkeeping, and calls without a credential.
    GATEWAY: [("agents.read", "*"), *GATEWAY_OWN, *A2A_CALLER],
    ALICE: [*A2A_CALLER, ("topics.publish", inbox_topic(AGENT))],
    BOB: [*A2A_CALLER, ("topics.publish", inbox_topic(AGENT))],
    CAROL: A2A_CALLER,
    spiffe(AGENT): [("*", "*")],
    spiffe("admin"): [("*", "*")],
}

issuer, guarded = guarded_fixtures(GRANTS, "a2a-auth")


def start_gateway(target: str, own_token: str, *options: str) -> tuple[subprocess.Popen[str], str]:
    """`packetbus a2a serve` with its own token, once it serves: the process, its URL."""
    port = free_port()
    argv = [sys.executable, "-m", "packetbus._cli", "a2a", "serve", "--target", target]
    argv += ["--listen", f"127.0.0.1:{port}", "--grpc-listen", f"127.0.0.1:{free_port()}"]
    argv += ["--answer-timeout", "20", *options]
    # read_on: a2a-sdk logs each refused execution; the pipe must never fill.
    process = serving(
        argv, env={"PACKETBUS_TOKEN": own_token}, ready="a2a gateway serving on", read_on=True
    )
    return process, f"http://127.0.0.1:{port}"


def stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    assert process.wait(timeout=10) == 0


@pytest.fixture(scope="module")
def target(guarded: RunningServer) -> str:
    return f"127.0.0.1:{guarded.port}"


@pytest.fixture(scope="module")
def gateway(target: str, issuer: Issuer) -> Iterator[str]:
    process, url = start_gateway(target, issuer.token(GATEWAY), "--default-agent", AGENT)
    yield url
    stop(process)


@pytest.fixture(scope="module")
def strict_gateway(target: str, issuer: Issuer) -> Iterator[str]:
    process, url = start_gateway(target, issuer.token(GATEWAY), "--require-auth")
    yield url
    stop(process)


@pytest.fixture
async def base(target: str) -> AsyncIterator[packetbus.Client]:
    """A client of the guarded server without a token of its own (loopback)."""
    async with await packetbus.Client.connect(target, token=None) as c:
        yield c


@pytest.fixture
async def admin(base: packetbus.Client, issuer: Issuer) -> packetbus.Client:
    return base.with_token(issuer.token(spiffe("admin")))


@pytest.fixture
async def agent(base: packetbus.Client, issuer: Issuer) -> AsyncIterator[A2AAgent]:
    """AGENT answering each request "done: <text>", its deliveries kept in `seen`."""
    client = base.with_token(issuer.token(spiffe(AGENT)))
    seen: list[packet_service_pb2.StoredPacket] = []

    async def answer(request: A2ARequest) -> None:
        seen.append(request.packet)
        await request.finish(f"done: {request.text}")

    async with answering(client, AGENT, answer, role="secured", capabilities=["echo"]) as served:
        served.seen = seen  # type: ignore[attr-defined]
        yield served


class Bearer(ClientCallInterceptor):
    """Sends ``Authorization: Bearer <token>`` with every call: a2a-sdk's gRPC
    transport sends a call's service parameters as metadata (keys lower-cased)."""

    def __init__(self, token: str) -> None:
        self.token = token

    async def before(self, args: BeforeArgs) -> None:
        args.context = args.context or ClientCallContext()
        parameters = args.context.service_parameters or {}
        args.context.service_parameters = {**parameters, "Authorization": f"Bearer {self.token}"}

    async def after(self, args: AfterArgs) -> None:
        pass


class Credentials(CredentialService):
    """`token` for every security scheme a card declares (for a2a-sdk's AuthInterceptor)."""

    def __init__(self, token: str) -> None:
        self.token = token

    async def get_credentials(self, name: str, context: ClientCallContext | None) -> str | None:
        return self.token


@contextlib.asynccontextmanager
async def a2a_as(
    url: str, token: str | None, binding: str = "JSONRPC", *, streaming: bool = False
) -> AsyncIterator[A2AClient]:
    """The a2a-sdk client of AGENT on gateway `url` over `binding`, calling with
    `token` (HTTP: a header on every request; gRPC: call metadata)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    http = httpx.AsyncClient(headers=headers, timeout=30)
    config = ClientConfig(
        streaming=streaming,
        supported_protocol_bindings=[binding],
        httpx_client=http,
        grpc_channel_factory=grpc.aio.insecure_channel,
    )
    grpc_token: list[ClientCallInterceptor] = [Bearer(token)] if token and binding == "GRPC" else []
    a2a = await ClientFactory(config).create_from_url(
        f"{url}/agents/{AGENT}/", interceptors=grpc_token
    )
    try:
        yield a2a
    finally:
        await a2a.close()
        await http.aclose()


@contextlib.asynccontextmanager
async def stub_of(url: str) -> AsyncIterator[a2a_pb2_grpc.A2AServiceStub]:
    """a2a-sdk's generated gRPC stub on the gRPC address AGENT's card gives."""
    async with httpx.AsyncClient() as http:
        card = (await http.get(f"{url}/agents/{AGENT}/.well-known/agent-card.json")).json()
    [address] = [i["url"] for i in card["supportedInterfaces"] if i["protocolBinding"] == "GRPC"]
    async with grpc.aio.insecure_channel(address) as channel:
        yield a2a_pb2_grpc.A2AServiceStub(channel)  # type: ignore[no-untyped-call]


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def challenge(error: grpc.aio.AioRpcError) -> list[str]:
    """The ``www-authenticate`` trailing metadata of a failed call."""
    return [v for k, v in error.trailing_metadata() or () if k == "www-authenticate"]


async def send(a2a: A2AClient, text: str) -> Task:
    message = Message(role=Role.ROLE_USER, message_id=str(uuid.uuid4()), parts=[Part(text=text)])
    [response] = [r async for r in a2a.send_message(SendMessageRequest(message=message))]
    return response.task


def records(stored: packetbus.StoredPacket) -> list[tuple[str, str]]:
    chain = [custody_pb2.CustodyRecord.FromString(e.record) for e in stored.packet.chain_of_custody]
    return [(r.action, r.principal) for r in chain]


async def owned(admin: packetbus.Client, name: str) -> list[str]:
    """The task documents of AGENT owned by principal `name`."""
    prefix = f"{AGENT}/@{owner_key(name)}/"
    page = await admin.list_contexts(SCOPE, name_prefix=prefix)
    return [d.name for d in page.documents]


# -- Client.with_token ---------------------------------------------------------------


async def test_with_token_view_calls_as_its_principal(
    base: packetbus.Client, admin: packetbus.Client, issuer: Issuer, target: str
) -> None:
    topic = unique("view")
    packet = new_packet(topic)
    packet.origin = "admin"
    [result] = await admin.dispatch_batch([packet])
    assert result.WhichOneof("outcome") == "receipt"
    verdict = await admin.verify_custody(packet.tracking_id)
    assert [(e.action, e.principal) for e in verdict.entries] == [
        ("received", spiffe("admin")),
        ("dispatched", spiffe("admin")),
    ]
    # The view's close closes no connection: the base and other views still call.
    await admin.close()
    again = base.with_token(issuer.token(spiffe("admin")))
    assert (await again.list_contexts(SCOPE, name_prefix=unique("none"))).documents == []
    # Without a token, the guarded server refuses the base's calls.
    with pytest.raises(PacketbusError) as refused:
        await base.list_contexts(SCOPE)
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED

    # Two tokens on one call would be refused: a client with its own has no views.
    async with await packetbus.Client.connect(target, token=issuer.token(GATEWAY)) as own:
        with pytest.raises(ValueError, match="already sends a token"):
            own.with_token(issuer.token(ALICE))
    # Clear text over a network: never.
    far = await packetbus.Client.connect("192.0.2.1:50051", token=None, timeout=None)
    try:
        with pytest.raises(ValueError, match="only over TLS or to this machine"):
            far.with_token(issuer.token(ALICE))
    finally:
        await far.close()
    with pytest.raises(ValueError, match="empty"):
        base.with_token("  ")


# -- the gateway ---------------------------------------------------------------------


@pytest.mark.parametrize("binding", ["JSONRPC", "HTTP+JSON", "GRPC"])
async def test_the_callers_token_reaches_packetbus(
    gateway: str, agent: A2AAgent, admin: packetbus.Client, issuer: Issuer, binding: str
) -> None:
    async with a2a_as(gateway, issuer.token(ALICE), binding) as a2a:
        task = await send(a2a, "hello")
        assert task.status.state == TaskState.TASK_STATE_COMPLETED
        # The REQUEST was dispatched as alice: the server's custody says so.
        [request] = [p for p in agent.seen if p.packet.reply_with == task.id]  # type: ignore[attr-defined]
        assert records(request)[:2] == [("received", ALICE), ("dispatched", ALICE)]
        # The task is alice's document, and hers to read.
        assert await owned(admin, ALICE) != []
        assert any(name.endswith("/" + task.id) for name in await owned(admin, ALICE))
        got = await a2a.get_task(GetTaskRequest(id=task.id))
        assert (got.id, got.status.state) == (task.id, TaskState.TASK_STATE_COMPLETED)


async def test_a_caller_refused_sending_gets_403_and_nothing_is_stored(
    gateway: str, agent: A2AAgent, admin: packetbus.Client, issuer: Issuer
) -> None:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "SendMessage",
        "params": {
            "message": {
                "role": "ROLE_USER",
                "messageId": str(uuid.uuid4()),
                "parts": [{"text": "hi"}],
            }
        },
    }
    headers = {"Authorization": f"Bearer {issuer.token(CAROL)}", "A2A-Version": "1.0"}
    async with httpx.AsyncClient(timeout=30) as http:
        jsonrpc = await http.post(f"{gateway}/agents/{AGENT}/", json=body, headers=headers)
        assert jsonrpc.status_code == 403, jsonrpc.text
        assert "topics.publish" in jsonrpc.json()["error"]
        rest = await http.post(
            f"{gateway}/agents/{AGENT}/rest/message:send", json=body["params"], headers=headers
        )
        assert rest.status_code == 403, rest.text
        # Streaming too: refused before the stream starts.
        streaming = await http.post(
            f"{gateway}/agents/{AGENT}/",
            json={**body, "method": "SendStreamingMessage"},
            headers=headers,
        )
        assert streaming.status_code == 403, streaming.text
        rest_stream = await http.post(
            f"{gateway}/agents/{AGENT}/rest/message:stream", json=body["params"], headers=headers
        )
        assert rest_stream.status_code == 403, rest_stream.text
        # A token the server does not take: 401 with the bearer challenge.
        forged = issuer.token(CAROL)[:-4] + "AAAA"
        bad = await http.post(
            f"{gateway}/agents/{AGENT}/",
            json=body,
            headers={"Authorization": f"Bearer {forged}", "A2A-Version": "1.0"},
        )
        assert bad.status_code == 401, bad.text
        assert bad.headers["www-authenticate"] == "Bearer"
        # Not a bearer token at all: 401 before anything is called.
        basic = await http.post(
            f"{gateway}/agents/{AGENT}/", json=body, headers={"Authorization": "Basic eDp5"}
        )
        assert basic.status_code == 401
    assert await owned(admin, CAROL) == []
    assert agent.seen == []  # type: ignore[attr-defined]


def hello() -> SendMessageRequest:
    message = Message(role=Role.ROLE_USER, message_id=str(uuid.uuid4()), parts=[Part(text="hi")])
    return SendMessageRequest(message=message)


async def test_grpc_refusals_have_their_status_codes(
    gateway: str, agent: A2AAgent, admin: packetbus.Client, issuer: Issuer
) -> None:
    carol = bearer(issuer.token(CAROL))
    async with stub_of(gateway) as a2a:
        # Refused by packetbus (carol may not publish to the agent's inbox): its
        # code and message, unary and streaming.
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await a2a.SendMessage(hello(), metadata=carol)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert denied.value.details().startswith("packetbus refused: ")
        assert "topics.publish" in denied.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            async for _ in a2a.SendStreamingMessage(hello(), metadata=carol):
                pass
        assert streamed.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "topics.publish" in streamed.value.details()
        # A token the server does not take: UNAUTHENTICATED with the bearer challenge.
        forged = bearer(issuer.token(CAROL)[:-4] + "AAAA")
        for call in (
            a2a.SendMessage(hello(), metadata=forged),
            a2a.ListTasks(ListTasksRequest(), metadata=forged),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await call
            assert bad.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert bad.value.details().startswith("packetbus refused: ")
            assert challenge(bad.value) == ["Bearer"]
        # Malformed: refused before anything is called, with the HTTP side's messages.
        malformed = {
            "Basic eDp5": "the Authorization header is not 'Bearer <token>'",
            "Bearer not-a-jwt": "the bearer token is not a JWT",
        }
        for value, message in malformed.items():
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await a2a.SendMessage(hello(), metadata=(("authorization", value),))
            assert (bad.value.code(), bad.value.details()) == (
                grpc.StatusCode.UNAUTHENTICATED,
                message,
            )
            assert challenge(bad.value) == ["Bearer"]
        with pytest.raises(grpc.aio.AioRpcError) as twice:
            await a2a.GetTask(GetTaskRequest(id="t"), metadata=carol + bearer("a.b.c"))
        assert (twice.value.code(), twice.value.details()) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "the call has more than one authorization metadata entry",
        )
    assert await owned(admin, CAROL) == []
    assert agent.seen == []  # type: ignore[attr-defined]


async def test_grpc_task_of_another_caller_is_not_found(
    gateway: str, agent: A2AAgent, issuer: Issuer
) -> None:
    async with stub_of(gateway) as a2a:
        made = await a2a.SendMessage(hello(), metadata=bearer(issuer.token(ALICE)))
        task = made.task
        assert task.status.state == TaskState.TASK_STATE_COMPLETED
        got = await a2a.GetTask(GetTaskRequest(id=task.id), metadata=bearer(issuer.token(ALICE)))
        assert got.id == task.id
        for metadata in (bearer(issuer.token(BOB)), ()):
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await a2a.GetTask(GetTaskRequest(id=task.id), metadata=metadata)
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("binding", ["JSONRPC", "GRPC"])
async def test_a_task_is_visible_to_its_creator_only(
    gateway: str, agent: A2AAgent, issuer: Issuer, binding: str
) -> None:
    async with a2a_as(gateway, issuer.token(ALICE), binding) as alice:
        task = await send(alice, "mine")
        assert task.id in [t.id for t in (await alice.list_tasks(ListTasksRequest())).tasks]
    for token in (issuer.token(BOB), None):  # another principal; no credential at all
        async with a2a_as(gateway, token, binding, streaming=True) as other:
            with pytest.raises(TaskNotFoundError):
                await other.get_task(GetTaskRequest(id=task.id))
            with pytest.raises(TaskNotFoundError):
                await other.cancel_task(CancelTaskRequest(id=task.id))
            with pytest.raises(TaskNotFoundError):
                async for _ in other.subscribe(SubscribeToTaskRequest(id=task.id)):
                    pass
            listed = await other.list_tasks(ListTasksRequest())
            assert task.id not in [t.id for t in listed.tasks]


async def test_require_auth(strict_gateway: str, agent: A2AAgent, issuer: Issuer) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        card = (
            await http.get(f"{strict_gateway}/agents/{AGENT}/.well-known/agent-card.json")
        ).json()
        assert card["securitySchemes"] == {
            "bearer": {
                "httpAuthSecurityScheme": {
                    "scheme": "Bearer",
                    "bearerFormat": "JWT",
                    "description": "a JWT the packetbus server accepts; calls are made as its sub",
                }
            }
        }
        assert card["securityRequirements"] == [{"schemes": {"bearer": {}}}]
        for path in ("/", "/rest/tasks"):
            refused = await http.post(f"{strict_gateway}/agents/{AGENT}{path}", json={})
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == "Bearer"
    async with a2a_as(strict_gateway, issuer.token(ALICE)) as alice:
        task = await send(alice, "with a token")
        assert task.status.state == TaskState.TASK_STATE_COMPLETED
    # gRPC: the same rule (no default agent here, and the tenant is not even looked at).
    async with stub_of(strict_gateway) as a2a:
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await a2a.GetTask(GetTaskRequest(id="t"))
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            async for _ in a2a.SendStreamingMessage(hello()):
                pass
        for refused_call in (unary.value, streamed.value):
            assert (refused_call.code(), refused_call.details()) == (
                grpc.StatusCode.UNAUTHENTICATED,
                "this gateway requires a credential: Authorization: Bearer <JWT>",
            )
            assert challenge(refused_call) == ["Bearer"]
    # a2a-sdk's own AuthInterceptor sends the token for the scheme the card declares.
    config = ClientConfig(
        streaming=False,
        supported_protocol_bindings=["GRPC"],
        grpc_channel_factory=grpc.aio.insecure_channel,
    )
    auth = AuthInterceptor(Credentials(issuer.token(ALICE)))
    a2a_client = await ClientFactory(config).create_from_url(
        f"{strict_gateway}/agents/{AGENT}/", interceptors=[auth]
    )
    try:
        task = await send(a2a_client, "with a token over gRPC")
        assert task.status.state == TaskState.TASK_STATE_COMPLETED
    finally:
        await a2a_client.close()


def test_cli_require_auth_needs_a_connection_that_may_carry_tokens() -> None:
    far = run_cli(
        "a2a", "serve", "--target", "192.0.2.1:50051", "--require-auth", "--listen", "127.0.0.1:0",
        "--public-url", "http://gateway.example",
    )  # fmt: skip
    assert (far.returncode, far.stdout) == (2, "")
    assert far.stderr == (
        "packetbus: --require-auth forwards callers' tokens, which travel only over TLS or to "
        "this machine, and 192.0.2.1:50051 is neither: give --tls-ca (or a loopback --target)\n"
    )
