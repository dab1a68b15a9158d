"""Shared pieces of the A2A gateway tests: a packetbus agent answering through the
helper (`A2AAgent`) in the background, and the check that a canceled task's agent
found its CANCEL packet."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import packetbus
from packetbus import SpeechAct
from packetbus_a2a import A2AAgent, A2ARequest
from packetbus_a2a.wire import tracking_id

Answer = Callable[[A2ARequest], Awaitable[None]]


@contextlib.asynccontextmanager
async def answering(
    client: packetbus.Client,
    agent_id: str,
    answer: Answer,
    *,
    role: str,
    capabilities: list[str] | None = None,
) -> AsyncIterator[A2AAgent]:
    """`agent_id` registered (TTL 300 s) with `role` and `capabilities`, its inbox
    read as A2A requests, each handed to `answer` in the background until the block
    ends; then the agent stops and closes."""
    await client.register_agent(agent_id, role=role, capabilities=capabilities or [], ttl=300)
    agent = await A2AAgent.open(client, agent_id)

    async def serve() -> None:
        async for request in agent:
            await answer(request)

    running = asyncio.create_task(serve())
    try:
        yield agent
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await agent.close()


async def assert_agent_finds_the_cancel(
    client: packetbus.Client, agent_id: str, task_id: str, text: str
) -> None:
    """`agent_id`, starting now, reads task `task_id`'s request (its text `text`)
    from its inbox, then the CANCEL for it; the CANCEL packet's chain verifies."""
    async with await A2AAgent.open(client, agent_id) as agent:
        requests = aiter(agent)
        request = await asyncio.wait_for(anext(requests), 10)
        assert (request.task_id, request.text) == (task_id, text)

        async def read_on() -> A2ARequest:
            return await anext(requests)

        pending = asyncio.create_task(read_on())
        async with asyncio.timeout(10):
            # The set fills as `pending` reads the inbox: nothing to wait on but it.
            while task_id not in agent.cancelled:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pending
    cancel = await client.verify_custody(tracking_id(task_id, "cancel"))
    assert cancel.verified
    assert cancel.packet.packet.speech_act == SpeechAct.SPEECH_ACT_CANCEL
    assert cancel.packet.packet.reply_with == task_id
