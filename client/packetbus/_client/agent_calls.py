"""Client calls on the agent registry (delegated to _agents.Agents)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Literal

from packetbus.v1 import agent_service_pb2

from .._agents import LiveAgent, Liveness
from .._config import AgentIdentity
from .core import ClientCore


class AgentCalls(ClientCore):
    """Register, heartbeat, deregister, get, list and watch agents; `agent` for a live one."""

    async def register_agent(
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
    ) -> agent_service_pb2.RegisterAgentResponse:
        """Register an agent (or update its registration); it must then heartbeat within
        `ttl` seconds (0: the server default, 30) or turn stale, its claimed tasks going
        back to their queues. With `identity` (the same agent id), its public key is
        registered as the agent's signing key too. The response says whether it is new."""
        return await self._agents.register(
            agent_id,
            role=role,
            capabilities=capabilities,
            parent_id=parent_id,
            labels=labels,
            endpoint=endpoint,
            ttl=ttl,
            state=state,
            identity=identity,
            timeout=timeout,
        )

    async def heartbeat_agent(
        self, agent_id: str, *, state: str | None = None, timeout: float | None = None
    ) -> agent_service_pb2.Agent:
        """Keep an agent alive for another TTL, optionally setting its state. NOT_FOUND
        when it is not registered (any more): register it again."""
        return await self._agents.heartbeat(agent_id, state=state, timeout=timeout)

    async def deregister_agent(
        self,
        agent_id: str,
        *,
        cascade: bool = False,
        allow_missing: bool = False,
        timeout: float | None = None,
    ) -> list[str]:
        """Remove an agent (with `cascade`, every agent it spawned too); returns the ids
        removed. NOT_FOUND when it is not registered, unless `allow_missing`."""
        return await self._agents.deregister(
            agent_id, cascade=cascade, allow_missing=allow_missing, timeout=timeout
        )

    async def get_agent(
        self, agent_id: str, *, timeout: float | None = None
    ) -> agent_service_pb2.Agent:
        return await self._agents.get(agent_id, timeout=timeout)

    async def list_agents(
        self,
        *,
        role: str = "",
        capability: str = "",
        parent_id: str = "",
        liveness: Liveness = "any",
        page_size: int = 0,
        timeout: float | None = None,
    ) -> list[agent_service_pb2.Agent]:
        """Registered agents matching every filter given, in id order."""
        return await self._agents.list(
            role=role,
            capability=capability,
            parent_id=parent_id,
            liveness=liveness,
            page_size=page_size,
            timeout=timeout,
        )

    def watch_agents(
        self,
        *,
        start: Literal["latest", "earliest"] = "latest",
        after_cursor: str = "",
        started: Callable[[str], None] | None = None,
    ) -> AsyncIterator[agent_service_pb2.MembershipEvent]:
        """Membership events (joined, left, stale, state changed, ...) as they happen.
        `started`, if given, is called with the cursor a watch from now (`start`
        "latest", no `after_cursor`) starts after, as soon as the server sends it:
        resuming after it misses nothing, even before the first event."""
        return self._agents.watch(start=start, after_cursor=after_cursor, started=started)

    def agent(
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
        cascade_on_exit: bool = False,
        timeout: float | None = None,
    ) -> LiveAgent:
        """``async with client.agent("worker-1", capabilities=["python"]) as me:``
        registers the agent, heartbeats it every third of its TTL in the background and
        deregisters it on exit."""
        return LiveAgent(
            self._agents,
            agent_id,
            cascade_on_exit=cascade_on_exit,
            timeout=timeout,
            registration={
                "role": role,
                "capabilities": capabilities,
                "parent_id": parent_id,
                "labels": labels,
                "endpoint": endpoint,
                "ttl": ttl,
                "state": state,
                "identity": identity,
            },
        )
