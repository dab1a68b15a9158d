"""ExportPackets from the client side: an export that resumes where it stopped."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from packetbus.v1 import custody_service_pb2, custody_service_pb2_grpc

from ._resuming import resuming


async def export_stream(
    stub: custody_service_pb2_grpc.CustodyServiceStub,
    request: custody_service_pb2.ExportPacketsRequest,
    timeout: float | None,
) -> AsyncIterator[custody_service_pb2.ExportPacketsResponse]:
    """The responses of ExportPackets(`request`), each once, in order, across lost
    streams: on UNAVAILABLE it asks again with the last response's resume_token,
    after the pauses of `_resuming.RESUME_DELAYS` (a response received starts them
    over). `timeout` (seconds, None: no limit) bounds the whole export, resumes
    included. Raises PacketbusError for any other failure, when UNAVAILABLE lasts
    through every pause, or when the timeout runs out (DEADLINE_EXCEEDED)."""
    # A server that sends no tokens cannot resume without sending some twice.
    resumable = True

    def open_stream(token: str, left: float | None) -> Any:
        again = custody_service_pb2.ExportPacketsRequest()
        again.CopyFrom(request)
        again.resume_token = token
        return stub.ExportPackets(again, timeout=left)

    def token_of(response: custody_service_pb2.ExportPacketsResponse) -> str:
        nonlocal resumable
        resumable = bool(response.resume_token)
        return response.resume_token

    async for response in resuming(
        open_stream,
        token_of,
        after=request.resume_token,
        may_resume=lambda _: resumable,
        timeout=timeout,
    ):
        yield response
