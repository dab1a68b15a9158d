"""A stream whose client goes away while the server writes to it (here: a reply the
client refuses as over its receive limit) ended because of the client: the request
log says CANCELLED at INFO, not an ERROR "UNKNOWN GeneratorExit" that the README's
"What to alert on" would page someone for. Seen with server reflection (v1 and
v1alpha), whose error replies echo the request.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2

from packetbus_server._observability import request_log


@pytest.mark.one_backend
@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_a_stream_the_client_left_is_cancelled_not_unknown(
    target: str,
    version: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        request_log, "_budget", request_log.LineBudget()
    )  # other tests' lines aside
    method = f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
    # 5 MB: under the server's receive limit, over the client's default 4 MiB, and
    # echoed back in the "not found" reply.
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="x" * 5_000_000)
    with caplog.at_level(logging.DEBUG, logger="packetbus.server.requests"):
        async with grpc.aio.insecure_channel(target) as channel:
            call = channel.stream_stream(
                method,
                request_serializer=lambda b: b,
                response_deserializer=lambda b: b,
            )(iter([request.SerializeToString()]), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in call:
                    pass
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        for _ in range(50):  # the server sees the stream end a moment later
            # This call's lines: streams other tests left in the same server may
            # end (CANCELLED) meanwhile, and log too.
            lines = [
                r
                for r in caplog.records
                if r.name == "packetbus.server.requests" and method[1:] in r.getMessage()
            ]
            if lines:
                break
            await asyncio.sleep(0.05)
    # The server may also have finished writing before it saw the client go (then the
    # call is OK and not logged): either way never an ERROR "UNKNOWN GeneratorExit".
    assert [(r.levelname, r.getMessage()) for r in lines] in (
        [],
        [("DEBUG", f"{method[1:]} CANCELLED")],
    )
