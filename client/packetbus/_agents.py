"""The agent registry from the client side: register, heartbeat, find, watch, stay alive."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Self, TypeVar, cast

import grpc

from packetbus.v1 import agent_service_pb2 as pb
from packetbus.v1 import agent_service_pb2_grpc

from . import _custody
from ._calls import Call, Deadline
from ._config import AgentIdentity
from ._errors import PacketbusError
from ._resuming import resuming
from ._stopping import cancel_and_wait

T = TypeVar("T")
Liveness = Literal["any", "live", "stale"]
_LIVENESS = {
    "any": pb.AGENT_LIVENESS_UNSPECIFIED,
    "live": pb.AGENT_LIVENESS_LIVE,
    "stale": pb.AGENT_LIVENESS_STALE,
}

log = logging.getLogger("packetbus.agents")


class Agents:
    """The agent registry; the `Client` methods of the same names call these."""

    def __init__(
        self,
        stub: agent_service_pb2_grpc.AgentServiceStub,
        call: Call,
        deadline: Deadline,
    ) -> None:
        self._stub = stub
        self._call = call
        self._deadline = deadline

    async def register(
        self,
        agent_id: str,
        *,
        role: str = "",
        capabilities: Sequence[str] = (),
        parent_id: str = "",
        labels: Mapping[str, str] | None = None,
        endpoint: str = "",
        ttl: int = 0,
        state: str = "",
        identity: AgentIdentity | None = None,
        timeout: float | None = None,
    ) -> pb.RegisterAgentResponse:
        agent = pb.Agent(
            id=agent_id,
            role=role,
            capabilities=list(capabilities),
            parent_id=parent_id,
            labels=dict(labels or {}),
            endpoint=endpoint,
            heartbeat_ttl_seconds=ttl,
            state=state,
        )
        request = pb.RegisterAgentRequest(agent=agent)
        if identity is not None:
            if identity.agent_id != agent_id:
                raise ValueError(f"the identity is {identity.agent_id!r}'s, not {agent_id!r}'s")
            public_key = identity.signer.public_key
            request.public_key = public_key
            request.public_key_proof = identity.signer.sign(
                b"", _custody.agent_key_message(agent_id, public_key)
            )
        return cast(
            pb.RegisterAgentResponse,
            await self._call(self._stub.RegisterAgent, request, timeout),
        )

    async def heartbeat(
        self, agent_id: str, *, state: str | None = None, timeout: float | None = None
    ) -> pb.Agent:
        request = pb.HeartbeatAgentRequest(agent_id=agent_id)
        if state is not None:
            request.state = state
        response = await self._call(self._stub.HeartbeatAgent, request, timeout)
        return cast(pb.Agent, response.agent)

    async def deregister(
        self,
        agent_id: str,
        *,
        cascade: bool = False,
        allow_missing: bool = False,
        timeout: float | None = None,
    ) -> list[str]:
        """Remove `agent_id` (with `cascade`, every agent it spawned); the ids removed.
        NOT_FOUND when it is not registered, unless `allow_missing`: a call retried
        after its first reply was lost finds the agent gone, so pass
        `allow_missing=True` where that must not be an error."""
        request = pb.DeregisterAgentRequest(
            agent_id=agent_id, cascade=cascade, allow_missing=allow_missing
        )
        response = await self._call(self._stub.DeregisterAgent, request, timeout)
        return list(response.removed_agent_ids)

    async def get(self, agent_id: str, *, timeout: float | None = None) -> pb.Agent:
        request = pb.GetAgentRequest(agent_id=agent_id)
        response = await self._call(self._stub.GetAgent, request, timeout)
        return cast(pb.Agent, response.agent)

    async def list(
        self,
        *,
        role: str = "",
        capability: str = "",
        parent_id: str = "",
        liveness: Liveness = "any",
        page_size: int = 0,
        timeout: float | None = None,
    ) -> list[pb.Agent]:
        """Every matching agent, in id order (all pages, within one `timeout`)."""
        deadline = self._deadline(timeout)
        found: list[pb.Agent] = []
        token = ""
        while True:
            request = pb.ListAgentsRequest(
                role=role,
                capability=capability,
                parent_id=parent_id,
                liveness=_LIVENESS[liveness],
                page_size=page_size,
                page_token=token,
            )
            response = await self._call(self._stub.ListAgents, request, deadline - time.monotonic())
            found.extend(response.agents)
            token = response.next_page_token
            if not token:
                return found

    async def watch(
        self,
        *,
        start: Literal["latest", "earliest"] = "latest",
        after_cursor: str = "",
        started: Callable[[str], None] | None = None,
    ) -> AsyncIterator[pb.MembershipEvent]:
        """Membership events as they happen: from now (`start="latest"`), from the oldest
        kept, or after `after_cursor`. A lost connection resumes after the last event
        seen. `started`: called with the cursor a watch "from now" starts after, once
        the server says it. Raises DATA_LOSS when events after the cursor are no
        longer kept."""

        def open_stream(cursor: str, _: float | None) -> Any:
            if cursor:
                return self._stub.WatchAgents(pb.WatchAgentsRequest(after_cursor=cursor))
            position = (
                pb.MEMBERSHIP_START_EARLIEST if start == "earliest" else pb.MEMBERSHIP_START_LATEST
            )
            return self._stub.WatchAgents(pb.WatchAgentsRequest(start_position=position))

        cursor = after_cursor
        async for response in resuming(
            open_stream,
            _last_event_cursor,
            after=after_cursor,
            # Known once the server sent the start cursor (stream_start); without one
            # (an older server), resuming "from now" again would skip what happened
            # meanwhile. From the oldest kept, reopening there loses nothing.
            may_resume=lambda c: bool(c) or start == "earliest",
            started=started,
        ):
            if response.events_lost:
                raise PacketbusError(
                    grpc.StatusCode.DATA_LOSS,
                    f"membership events after {cursor} are no longer kept",
                )
            for event in response.events:
                cursor = event.cursor
                yield event


class LiveAgent:
    """An agent kept alive in the background: registered on entry, heartbeating every
    third of its TTL (registering again if it was removed meanwhile), deregistered on
    exit. Get it with ``async with client.agent(...) as me``."""

    def __init__(
        self,
        agents: Agents,
        agent_id: str,
        *,
        cascade_on_exit: bool,
        timeout: float | None,
        registration: dict[str, Any],
    ) -> None:
        self._agents = agents
        self.agent_id = agent_id
        self._cascade = cascade_on_exit
        self._timeout = timeout
        self._registration = registration
        self._ttl = 0
        self._task: asyncio.Task[None] | None = None
        self.agent = pb.Agent()

    async def _register(self) -> None:
        response = await self._agents.register(
            self.agent_id, timeout=self._timeout, **self._registration
        )
        self.agent = response.agent
        self._ttl = response.agent.heartbeat_ttl_seconds

    async def set_state(self, state: str) -> pb.Agent:
        """Change the agent's state now (a STATE_CHANGED event), with a heartbeat."""
        self._registration["state"] = state
        self.agent = await self._agents.heartbeat(self.agent_id, state=state, timeout=self._timeout)
        return self.agent

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(max(0.1, self._ttl / 3))
            try:
                self.agent = await self._agents.heartbeat(self.agent_id, timeout=self._timeout)
            except PacketbusError as exc:
                if exc.code == grpc.StatusCode.CANCELLED:
                    return  # the client closed: nothing left to heartbeat through
                if exc.code == grpc.StatusCode.NOT_FOUND:
                    # Removed while we could not reach the bus: join again.
                    with contextlib.suppress(PacketbusError):
                        await self._register()
                else:
                    log.warning("heartbeat of agent %s failed: %s", self.agent_id, exc)

    async def __aenter__(self) -> Self:
        await self._register()
        self._task = asyncio.create_task(self._beat(), name=f"packetbus-agent-{self.agent_id}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await cancel_and_wait(self._task)
        await self._agents.deregister(
            self.agent_id, cascade=self._cascade, allow_missing=True, timeout=self._timeout
        )


def _last_event_cursor(response: pb.WatchAgentsResponse) -> str:
    return response.events[-1].cursor if response.events else ""
