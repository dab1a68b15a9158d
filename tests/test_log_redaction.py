"""An exception a servicer does not handle is logged by grpc with its traceback: the
server's log keeps the traceback and the exception's type, never its text (which
can quote packet contents or a credential), in both formats."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

import packetbus
from packetbus.v1 import packet_service_pb2, packet_service_pb2_grpc
from packetbus_server._handlers import add_servicer
from packetbus_server._observability import logs

SECRET = f"contents-{uuid.uuid4().hex}"


class _Broken:
    """A PacketService whose Dispatch fails with an exception quoting its request."""

    async def Dispatch(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise KeyError(f"no field {SECRET}")

    def __getattr__(self, name: str) -> Any:
        return self.Dispatch


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """The root logger as it was (logs.configure replaces its handlers)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


async def _fail_one_call() -> None:
    server = grpc.aio.server()
    add_servicer(server, packet_service_pb2.DESCRIPTOR.services_by_name["PacketService"], _Broken())
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    request = packet_service_pb2.DispatchRequest(packets=[packetbus.Packet(topic="t")])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = packet_service_pb2_grpc.PacketServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.Dispatch(request)
            assert raised.value.code() is grpc.StatusCode.UNKNOWN
    finally:
        await server.stop(None)


@pytest.mark.usefixtures("restored_logging")
async def test_json_lines_keep_the_traceback_and_type_not_the_text(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure(logs.LogSettings(format=logs.JSON))
    await _fail_one_call()
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    [grpc_line] = [line for line in lines if line["logger"].startswith("grpc")]
    assert grpc_line["level"] == "ERROR"
    assert grpc_line["message"].startswith("Unexpected [KeyError] raised by servicer method")
    trace = grpc_line["exc_info"]
    assert trace.startswith("Traceback (most recent call last):\n")
    assert "test_log_redaction.py" in trace  # where it was raised
    assert trace.endswith("\nbuiltins.KeyError (its text is not logged: it may quote the request)")
    assert all(SECRET not in json.dumps(line) for line in lines)


@pytest.mark.usefixtures("restored_logging")
async def test_text_lines_too(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure(logs.LogSettings(format=logs.TEXT))
    await _fail_one_call()
    shown = capsys.readouterr().err
    assert "Unexpected [KeyError] raised by servicer method" in shown
    assert "builtins.KeyError (its text is not logged: it may quote the request)" in shown
    assert SECRET not in shown
