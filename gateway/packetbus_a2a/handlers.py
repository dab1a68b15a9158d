"""One a2a-sdk request handler per agent, shared by every transport of the gateway.

The HTTP app (JSON-RPC, HTTP+JSON) and the gRPC servicer both reach an agent's
`DefaultRequestHandler` through one `AgentHandlers`: built on first use from the
registry's entry (`request_handler.build_handler`), kept in a bounded LRU. A handler holds no task state of its own
beyond the streams it serves (tasks are in the context store), so one dropped
from the LRU and built again later loses nothing.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable

import grpc
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.types.a2a_pb2 import AgentCard

from packetbus import PacketbusError
from packetbus.v1 import agent_service_pb2

from .auth import Principals
from .request_handler import build_handler

MAX_HANDLERS = 256  # agents whose handler stays built; others are built again on use


class AgentHandlers:
    """The per-agent handlers of one gateway process.

    `card`: the agent card of a registry entry (the gateway's addresses in it);
    `answer_timeout`: seconds a task waits for the agent's final answer (see
    `InboxExecutor`); `max_handlers`: how many handlers stay built (LRU).
    """

    def __init__(
        self,
        clients: Principals,
        card: Callable[[agent_service_pb2.Agent], AgentCard],
        *,
        answer_timeout: float = 300.0,
        max_handlers: int = MAX_HANDLERS,
    ) -> None:
        self._clients = clients
        self._client = clients.default  # registry reads: the gateway's own settings
        self._card = card
        self._answer_timeout = answer_timeout
        self._max = max_handlers
        self._handlers: OrderedDict[str, DefaultRequestHandler] = OrderedDict()
        # This process's id in task driver leases (see `lease`).
        self._holder = uuid.uuid4().hex

    async def agent(self, agent_id: str) -> agent_service_pb2.Agent | None:
        """The registry's entry for `agent_id`; None when "" or not registered.
        Raises PacketbusError for anything else (the server unreachable...)."""
        if not agent_id:
            return None
        try:
            return await self._client.get_agent(agent_id)
        except PacketbusError as exc:
            if exc.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                return None
            raise

    async def get(self, agent_id: str) -> DefaultRequestHandler | None:
        """`agent_id`'s handler (built on first use); None when it is not registered."""
        handler = self._handlers.get(agent_id)
        if handler is not None:
            self._handlers.move_to_end(agent_id)
            return handler
        agent = await self.agent(agent_id)
        if agent is None:
            return None
        handler = self._handlers.get(agent_id)  # built by a concurrent call meanwhile
        if handler is None:
            handler = self._build(agent_id, self._card(agent))
            self._handlers[agent_id] = handler
        while len(self._handlers) > self._max:
            # Dropped, not closed: tasks it still runs finish on their own.
            self._handlers.popitem(last=False)
        return handler

    def _build(self, agent_id: str, card: AgentCard) -> DefaultRequestHandler:
        return build_handler(
            self._clients,
            agent_id,
            card,
            holder=self._holder,
            answer_timeout=self._answer_timeout,
        )

    async def aclose(self) -> None:
        """Drain every built handler (its running tasks end)."""
        while self._handlers:
            _, handler = self._handlers.popitem()
            await handler.aclose()
