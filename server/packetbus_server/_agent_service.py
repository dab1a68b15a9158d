"""AgentService: the agent registry (register, heartbeat, deregister, find) and its watch.

Registrations and key proofs are checked in _agent_requests, written in _agent_store;
replies are built in _agent_states."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import grpc

from packetbus.v1 import agent_service_pb2 as pb
from packetbus.v1 import agent_service_pb2_grpc

from . import _status
from ._access import binding
from ._agent_requests import check_agent_key, check_text, registration_violations
from ._agent_states import agent_from_fields, cursor_key, membership_event
from ._agent_store import AgentStore, Unchecked
from ._clock import StoreClock
from ._custodian import principal_name
from ._field_rules import MAX_SHORT_TEXT, validate_agent_id, validate_id
from ._fields import is_stream_id
from ._key_store import KeyStore, Registration
from ._limits import Limits
from ._packing import ITEM_OVERHEAD, message_size, packs
from ._page_tokens import seal, unseal
from ._storage_errors import storage_errors
from ._stream_ends import caller_gone, stream_started
from ._validation import Violation

# An idle watcher reads again this often (a read shared with the other watchers of
# the same log, see _waits); cancellation and drain end it sooner (_streams).
_WATCH_BLOCK_MS = 5000
# Ids looked at per ListAgents call at most: a filter matching few agents
# answers a short page (with a token to go on) rather than scan everything.
_SCAN_FACTOR = 10
# Times a cascading deregistration looks again for descendants attached while it
# checked the caller's right to each, before it answers ABORTED.
_CASCADE_ROUNDS = 3


class AgentService(agent_service_pb2_grpc.AgentServiceServicer):
    def __init__(
        self, store: AgentStore, key_store: KeyStore, limits: Limits, *, clock: StoreClock
    ) -> None:
        self._store = store
        # The store's clock: heartbeat deadlines are written by it (scripts), so
        # liveness is judged by it.
        self._clock = clock
        self._key_store = key_store
        self._limits = limits

    # -- registering -----------------------------------------------------------------

    async def RegisterAgent(
        self, request: pb.RegisterAgentRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterAgentResponse:
        violations = registration_violations(request, self._limits)
        if violations:
            await _status.abort_invalid(context, "invalid agent registration", violations)
        await binding.require_acting(context, request.agent.id, "agent.id")
        key = await check_agent_key(
            context, request, key_store=self._key_store, store=self._store, clock=self._clock
        )
        spec = pb.Agent()
        spec.CopyFrom(request.agent)
        spec.heartbeat_ttl_seconds = (
            spec.heartbeat_ttl_seconds or self._limits.default_agent_ttl_seconds
        )
        spec.state = ""  # kept beside the registration: heartbeats change it
        if key is not None:
            spec.key_id = key.key_id
        spec_bytes = spec.SerializeToString(deterministic=True)
        state = request.agent.state
        fingerprint = hashlib.sha256(spec_bytes + b"\x00" + state.encode()).hexdigest()[:32]
        async with storage_errors(context):
            registered = await self._store.register(
                spec.id,
                spec_bytes,
                parent=spec.parent_id,
                state=state,
                ttl_ms=spec.heartbeat_ttl_seconds * 1000,
                fingerprint=fingerprint,
            )
            outcome = registered.outcome
            if outcome in ("new", "updated") and key is not None:
                # The caller may act as the agent (checked above): its keys are
                # bound to this principal if no other holds them yet.
                bound = await self._key_store.register_agent(
                    key, endorsing_key_id="", principal=principal_name()
                )
                if bound not in (Registration.REGISTERED, Registration.EXISTS):
                    # Only a race with another registration of a key can get here.
                    await context.abort(
                        grpc.StatusCode.ABORTED,
                        f"the agent's key could not be bound ({bound.value}); retry",
                    )
        if outcome == "full":
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the registry holds {self._limits.max_agents} agents, its limit",
            )
        if outcome == "no_parent":
            await _status.abort_with_reason(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"parent {spec.parent_id!r} is not registered",
                "PARENT_NOT_REGISTERED",
            )
        if outcome == "cycle":
            await _status.abort_with_reason(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"parent {spec.parent_id!r} descends from {spec.id!r}: that would be a cycle",
                "PARENT_CYCLE",
            )
        return pb.RegisterAgentResponse(
            agent=agent_from_fields(spec.id, registered.fields, self._clock.now_ms()),
            created=outcome == "new",
        )

    async def HeartbeatAgent(
        self, request: pb.HeartbeatAgentRequest, context: grpc.aio.ServicerContext
    ) -> pb.HeartbeatAgentResponse:
        violations: list[Violation] = []
        validate_agent_id(violations, "agent_id", request.agent_id)
        state = request.state if request.HasField("state") else None
        if state is not None:
            check_text(violations, "state", state, MAX_SHORT_TEXT)
        if violations:
            await _status.abort_invalid(context, "invalid heartbeat", violations)
        await binding.require_acting(context, request.agent_id, "agent_id")
        async with storage_errors(context):
            fields = await self._store.heartbeat(request.agent_id, state)
        if fields is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"agent {request.agent_id!r} is not registered (never, or removed after "
                "missing its heartbeats): register it again",
            )
            raise AssertionError("context.abort always raises")
        return pb.HeartbeatAgentResponse(
            agent=agent_from_fields(request.agent_id, fields, self._clock.now_ms())
        )

    async def DeregisterAgent(
        self, request: pb.DeregisterAgentRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeregisterAgentResponse:
        await self._check_id(context, request.agent_id, "invalid deregistration")
        await binding.require_acting(context, request.agent_id, "agent_id")
        removed = await self._deregister(context, request.agent_id, cascade=request.cascade)
        if not removed and not request.allow_missing:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"agent {request.agent_id!r} is not registered"
            )
        return pb.DeregisterAgentResponse(removed_agent_ids=removed)

    async def _deregister(
        self, context: grpc.aio.ServicerContext, agent_id: str, *, cascade: bool
    ) -> list[str]:
        """Deregister `agent_id`; with `cascade`, each agent the cascade removes needs
        the same right (a coordinator cannot take down, through its own child, an
        agent it may not act as). The script removes only the descendants checked
        here: one attached meanwhile sends us round again."""
        for _ in range(_CASCADE_ROUNDS):
            checked: list[str] | None = None
            if cascade:
                async with storage_errors(context):
                    checked = await self._descendants(agent_id)
                for descendant in checked:
                    await binding.require_acting(context, descendant, "agent_id (a descendant)")
            async with storage_errors(context):
                removed = await self._store.deregister(agent_id, cascade=cascade, checked=checked)
            if not isinstance(removed, Unchecked):
                return removed
        await context.abort(
            grpc.StatusCode.ABORTED,
            f"agents kept joining below {agent_id!r} while it was deregistered; retry",
        )
        raise AssertionError("context.abort always raises")

    async def _descendants(self, agent_id: str) -> list[str]:
        """Every agent whose parent chain leads to `agent_id`, breadth first (what a
        cascading deregistration removes; agent_deregister.lua walks the same sets).
        Bounded by the registry's size (max_agents)."""
        order, seen = [agent_id], {agent_id}
        j = 0
        while j < len(order) and len(order) <= self._limits.max_agents:
            children = [c for c in await self._store.children(order[j]) if c not in seen]
            found = await self._store.get_many(children)
            for child, fields in zip(children, found, strict=True):
                if fields is not None:  # as the script: a child no longer registered is skipped
                    seen.add(child)
                    order.append(child)
            j += 1
        return order[1:]

    async def _check_id(self, context: grpc.aio.ServicerContext, agent_id: str, what: str) -> None:
        violations: list[Violation] = []
        validate_agent_id(violations, "agent_id", agent_id)
        if violations:
            await _status.abort_invalid(context, what, violations)

    # -- reading ---------------------------------------------------------------------

    async def GetAgent(
        self, request: pb.GetAgentRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetAgentResponse:
        await self._check_id(context, request.agent_id, "invalid agent")
        async with storage_errors(context):
            [fields] = await self._store.get_many([request.agent_id])
        if fields is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"agent {request.agent_id!r} is not registered (never, or removed)",
            )
            raise AssertionError("context.abort always raises")
        return pb.GetAgentResponse(
            agent=agent_from_fields(request.agent_id, fields, self._clock.now_ms())
        )

    async def ListAgents(
        self, request: pb.ListAgentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAgentsResponse:
        limits = self._limits
        violations: list[Violation] = []
        check_text(violations, "role", request.role, MAX_SHORT_TEXT)
        if request.capability:
            validate_id(violations, "capability", request.capability)
        if request.parent_id:
            validate_agent_id(violations, "parent_id", request.parent_id)
        scope = (request.role, request.capability, request.parent_id, request.liveness)
        after = unseal(violations, "agents", scope, request.page_token)
        if after:
            validate_agent_id(violations, "page_token", after)
        if request.liveness not in pb.AgentLiveness.values():
            violations.append(Violation("liveness", "ENUM", f"unknown value {request.liveness}"))
        if request.page_size > limits.max_agent_page:
            violations.append(
                Violation("page_size", "RANGE", f"must be at most {limits.max_agent_page}")
            )
        if violations:
            await _status.abort_invalid(context, "invalid agent listing", violations)
        page_size = request.page_size or limits.default_agent_page
        budget = max(page_size, 100) * _SCAN_FACTOR
        exhausted = False
        found: list[pb.Agent] = []
        # Labels and capabilities make an agent up to tens of KiB: a page ends at
        # the reply budget too, after the last agent it holds.
        total, full = 0, False
        async with storage_errors(context):
            siblings = await self._store.children(request.parent_id) if request.parent_id else None
            while len(found) < page_size and budget > 0:
                count = min(budget, max(page_size - len(found), 100))
                if siblings is not None:
                    ids = [i for i in siblings if i > after][:count]
                    read = len(ids)
                else:
                    ids, read = await self._store.ids_after(after, count)
                budget -= read
                now, consumed = self._clock.now_ms(), 0
                for agent_id, fields in zip(ids, await self._store.get_many(ids), strict=True):
                    after, consumed = agent_id, consumed + 1
                    if fields is not None:
                        agent = agent_from_fields(agent_id, fields, now)
                        if self._matches(request, agent):
                            total += message_size(agent) + ITEM_OVERHEAD
                            if found and total > limits.reply_budget_bytes:
                                after, full = found[-1].id, True
                                break
                            found.append(agent)
                            if len(found) == page_size:
                                break
                if full:
                    break
                if consumed == len(ids) and read < count:
                    exhausted = True
                    break
        return pb.ListAgentsResponse(
            agents=found, next_page_token="" if exhausted else seal("agents", scope, after)
        )

    @staticmethod
    def _matches(request: pb.ListAgentsRequest, agent: pb.Agent) -> bool:
        return (
            (not request.role or agent.role == request.role)
            and (not request.capability or request.capability in agent.capabilities)
            and (not request.parent_id or agent.parent_id == request.parent_id)
            and (not request.liveness or agent.liveness == request.liveness)
        )

    async def WatchAgents(
        self, request: pb.WatchAgentsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchAgentsResponse]:
        start = request.WhichOneof("start")
        if start == "after_cursor" and not is_stream_id(request.after_cursor):
            await _status.abort_invalid(
                context,
                "invalid watch",
                [Violation("after_cursor", "CURSOR_FORMAT", "must be a cursor: <ms>-<seq>")],
            )
        lost = False
        async with storage_errors(context, retry_hint="watch again after the last cursor seen"):
            if start == "after_cursor":
                cursor = request.after_cursor
                lost = cursor_key(await self._store.first_kept()) > cursor_key(cursor)
            elif request.start_position == pb.MEMBERSHIP_START_EARLIEST:
                cursor = "0-0"
            else:
                cursor = await self._store.last_event()
            from_now = (
                start != "after_cursor" and request.start_position != pb.MEMBERSHIP_START_EARLIEST
            )
            await stream_started(context, cursor if from_now else None)
            if lost:
                yield pb.WatchAgentsResponse(events_lost=True)
            while not caller_gone(context):
                cursor, entries = await self._store.events(cursor, _WATCH_BLOCK_MS)
                events = [membership_event(e) for e in entries]
                for part in packs(events, message_size, self._limits.reply_budget_bytes):
                    yield pb.WatchAgentsResponse(events=part)
