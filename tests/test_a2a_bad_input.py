"""The A2A gateway under bad input (issue 18): a caller's mistake is a precise
A2A error (JSON-RPC -32602 / -32700, HTTP 400, gRPC INVALID_ARGUMENT), never an
internal error (-32603, HTTP 500, gRPC UNKNOWN), and no traceback in the log.

A real `packetbus serve` (the session's), a real `packetbus a2a serve` with gRPC
on, one registered agent; httpx and a2a-sdk's gRPC stub send ids far over the
server's limits, bodies nested thousands deep and (hypothesis) arbitrary ids.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from urllib.parse import quote

import grpc
import httpx
import pytest
from a2a.types import a2a_pb2, a2a_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import packetbus
from tests.conftest import unique
from tests.test_a2a_grpc import Gateway, start_grpc_gateway

pytestmark = pytest.mark.one_backend

AGENT = unique("a2a-bad-input")
LONG_ID = "t" * 10_000
A2A_1 = {"A2A-Version": "1.0"}
# The packetbus server's refusal of a task id over its context-name limit.
NAME_LIMIT = "invalid context read: name: must be 1..512 bytes (UTF-8)"


@pytest.fixture(scope="module")
async def registered(target: str) -> AsyncIterator[str]:
    async with await packetbus.Client.connect(target, timeout=10) as bus:
        await bus.register_agent(AGENT, role="bad-input", ttl=300)
        yield AGENT


@pytest.fixture(scope="module")
def gateway(target: str, registered: str) -> Iterator[tuple[Gateway, list[str]]]:
    process, gateway = start_grpc_gateway(target, "--default-agent", registered)
    assert process.stdout is not None
    printed: list[str] = []
    threading.Thread(target=printed.extend, args=(process.stdout,), daemon=True).start()
    yield gateway, printed
    process.terminate()
    assert process.wait(timeout=10) == 0
    assert "Traceback" not in "".join(printed), "".join(printed)


def rpc(method: str, params: object) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 7, "method": method, "params": params}).encode()


async def test_ids_over_the_servers_limits_are_invalid_params(
    gateway: tuple[Gateway, list[str]],
) -> None:
    http_url = f"{gateway[0].url}/agents/{AGENT}"
    async with httpx.AsyncClient(timeout=15, headers=A2A_1) as http:
        got = await http.post(f"{http_url}/", content=rpc("GetTask", {"id": LONG_ID}))
        assert got.status_code == 200
        assert (got.json()["id"], got.json()["error"]["code"]) == (7, -32602)
        assert got.json()["error"]["message"] == NAME_LIMIT
        rest = await http.get(f"{http_url}/rest/tasks/{LONG_ID}")
        assert rest.status_code == 400
        assert rest.json()["error"]["status"] == "INVALID_ARGUMENT"
        assert rest.json()["error"]["message"] == NAME_LIMIT
    async with grpc.aio.insecure_channel(gateway[0].grpc) as channel:
        stub = a2a_pb2_grpc.A2AServiceStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetTask(a2a_pb2.GetTaskRequest(id=LONG_ID), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == NAME_LIMIT
        with pytest.raises(grpc.aio.AioRpcError) as cancel:
            await stub.CancelTask(a2a_pb2.CancelTaskRequest(id=LONG_ID), timeout=10)
        assert cancel.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_enum_numbers_no_enum_defines_are_invalid_params(
    gateway: tuple[Gateway, list[str]],
) -> None:
    http_url = f"{gateway[0].url}/agents/{AGENT}"
    message = {"role": 77, "messageId": unique("m"), "parts": [{"text": "hi"}]}
    async with httpx.AsyncClient(timeout=15, headers=A2A_1) as http:
        listed = await http.post(f"{http_url}/", content=rpc("ListTasks", {"status": 99}))
        assert (listed.json()["error"]["code"], listed.json()["error"]["message"]) == (
            -32602,
            "status 99 is not a TaskState value",
        )
        sent = await http.post(
            f"{http_url}/",
            content=rpc(
                "SendMessage", {"message": message, "configuration": {"returnImmediately": True}}
            ),
        )
        assert (sent.json()["error"]["code"], sent.json()["error"]["message"]) == (
            -32602,
            "message.role 77 is not a Role value",
        )
        # Nothing was stored: the agent has no task.
        tasks = await http.post(f"{http_url}/", content=rpc("ListTasks", {}))
        assert tasks.json()["result"]["tasks"] == []
    async with grpc.aio.insecure_channel(gateway[0].grpc) as channel:
        stub = a2a_pb2_grpc.A2AServiceStub(channel)  # type: ignore[no-untyped-call]
        bad = a2a_pb2.Message(
            role=99,  # type: ignore[arg-type]  # no Role has it
            message_id="m",
            parts=[a2a_pb2.Part(text="x")],
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.SendMessage(a2a_pb2.SendMessageRequest(message=bad), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == "message.role 99 is not a Role value"
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            async for _ in stub.SendStreamingMessage(
                a2a_pb2.SendMessageRequest(message=bad), timeout=10
            ):
                pass
        assert streamed.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_stream_cancelled_at_once_leaves_the_gateway_serving(
    gateway: tuple[Gateway, list[str]],
) -> None:
    async with grpc.aio.insecure_channel(gateway[0].grpc) as channel:
        stub = a2a_pb2_grpc.A2AServiceStub(channel)  # type: ignore[no-untyped-call]
        message = a2a_pb2.Message(
            role=a2a_pb2.ROLE_USER, message_id=unique("m"), parts=[a2a_pb2.Part(text="x")]
        )
        call = stub.SendStreamingMessage(a2a_pb2.SendMessageRequest(message=message))
        call.cancel()
        subscribe = stub.SubscribeToTask(a2a_pb2.SubscribeToTaskRequest(id=unique("nope")))
        subscribe.cancel()
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetTask(a2a_pb2.GetTaskRequest(id=unique("nope")), timeout=10)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert "Traceback" not in "".join(gateway[1])


async def test_bodies_nested_too_deeply_are_parse_errors(
    gateway: tuple[Gateway, list[str]],
) -> None:
    http_url = f"{gateway[0].url}/agents/{AGENT}"
    async with httpx.AsyncClient(timeout=15, headers=A2A_1) as http:
        for deep in (b'{"a":' * 5000, b"[" * 50_000):
            got = await http.post(f"{http_url}/", content=deep)
            assert got.status_code == 200
            assert got.json() == {
                "jsonrpc": "2.0",
                "id": None,
                "error": {
                    "code": -32700,
                    "message": "the body is not JSON a2a can parse: "
                    "arrays or objects nested too deeply",
                },
            }
            rest = await http.post(f"{http_url}/rest/message:send", content=deep)
            assert rest.status_code == 400
            assert rest.json()["error"]["status"] == "INVALID_ARGUMENT"
        # An ordinary body still goes through (replayed to a2a-sdk).
        ok = await http.post(f"{http_url}/", content=rpc("GetTask", {"id": unique("nope")}))
        assert ok.json()["error"]["code"] == -32001  # TaskNotFoundError
    assert "Traceback" not in "".join(gateway[1])


async def test_unknown_a2a_routes_and_methods_are_json_errors(
    gateway: tuple[Gateway, list[str]],
) -> None:
    http_url = f"{gateway[0].url}/agents/{AGENT}"
    async with httpx.AsyncClient(timeout=15, headers=A2A_1) as http:
        missing = await http.get(f"{http_url}/rest/nothing/here")
        assert missing.status_code == 404
        assert missing.json() == {
            "error": {"code": 404, "status": "NOT_FOUND", "message": "no such A2A route"}
        }
        wrong = await http.get(f"{http_url}/")  # JSON-RPC is POST only
        assert wrong.status_code == 405
        assert wrong.json() == {
            "error": {
                "code": 405,
                "status": "UNIMPLEMENTED",
                "message": "method GET is not allowed here",
            }
        }
        assert wrong.headers["allow"] == "POST"


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(task_id=st.text(max_size=600), context_id=st.text(max_size=600))
async def test_arbitrary_ids_are_never_internal_errors(
    gateway: tuple[Gateway, list[str]], task_id: str, context_id: str
) -> None:
    http_url = f"{gateway[0].url}/agents/{AGENT}"
    async with httpx.AsyncClient(timeout=15, headers=A2A_1) as http:
        got = await http.post(f"{http_url}/", content=rpc("GetTask", {"id": task_id}))
        assert got.status_code == 200
        assert got.json()["error"]["code"] in (-32001, -32602), got.text
        listed = await http.post(
            f"{http_url}/", content=rpc("ListTasks", {"contextId": context_id})
        )
        assert "error" not in listed.json() or listed.json()["error"]["code"] == -32602
        rest = await http.get(f"{http_url}/rest/tasks/{quote(task_id, safe='')}")
        # ("." and ".." are dot segments: the URL is then another route, 200.)
        assert rest.status_code in (200, 400, 404, 405), rest.text
        assert rest.headers["content-type"] == "application/json"
