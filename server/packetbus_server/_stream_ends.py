"""A server-streaming RPC's two ends, as every streaming servicer handles them: its
start made known to the caller (stream_started), its caller gone (caller_gone).

Apart from PacketService (_packet_service), where they began with Subscribe,
because the watches (tasks, agents, contexts) and a consumer group's Pull share them.
"""

from __future__ import annotations

import asyncio

import grpc

from packetbus.stream_start import START_CURSOR_HEADER


def caller_gone(context: grpc.aio.ServicerContext) -> bool:
    """The caller of a streaming RPC went away, or the server is stopping.

    grpc cancels the handler's task then, but that cancellation can be lost
    when it lands while grpc itself awaits a write (seen with grpcio 1.85 on
    Python 3.11): grpc then asks for the next response, and on a quiet topic
    the handler would read on forever, holding a subscription slot. The task
    still says it was asked to stop.
    """
    task = asyncio.current_task()
    return context.cancelled() or (task is not None and task.cancelling() > 0)


async def stream_started(context: grpc.aio.ServicerContext, start_cursor: str | None) -> None:
    """Send the response headers now that the stream's start point is fixed: events
    after it reach the caller. A stream "from now" fixes that point with a store read
    after it was admitted (which may wait for a store connection); gRPC would
    otherwise send the headers with the first response, so a caller could not tell
    when its stream began, and an event caused in between (a task posted right after
    opening a watch) was missed silently. Callers await ``call.initial_metadata()``
    before they act.

    For a stream "from now", the headers carry `start_cursor`, the cursor it
    delivers after (`packetbus.stream_start`): a caller that loses the stream before
    its first event reopens it after that cursor rather than "from now", and misses
    nothing. None for a stream opened after a cursor (the caller knows it) or from
    the oldest kept (reopening there loses nothing and reports no old gap)."""
    headers = () if start_cursor is None else ((START_CURSOR_HEADER, start_cursor),)
    await context.send_initial_metadata(headers)
