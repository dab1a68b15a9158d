"""Which agent an A2A call is for: one a2a-sdk `RequestHandler` in front of them all.

`AgentRouter` is the single request handler the gateway gives a2a-sdk's transports
(JSON-RPC and HTTP+JSON routes, the gRPC servicer); each call goes on to the chosen
agent's `DefaultRequestHandler` (`AgentHandlers`):

- HTTP (JSON-RPC, HTTP+JSON): the agent is the path's (``/agents/<id>/...``, put
  in the call's state by `PathAgentContextBuilder`). A request whose A2A ``tenant``
  (JSON-RPC params, or the tenant-prefixed HTTP+JSON path) names another agent is
  refused with a2a-sdk's `InvalidParamsError` (JSON-RPC -32602, HTTP 400).
- gRPC: the agent is the request's ``tenant``, or the default agent when it is
  empty. No such agent: `AgentNotFoundError`, which `RoutingGrpcHandler` sends as
  ``NOT_FOUND`` (the code a2a-sdk gives a task that is not found).

A packetbus call that fails for a value the caller sent (``INVALID_ARGUMENT``,
``OUT_OF_RANGE``: a 10 KB task id, a context id over the server's limits...) is
answered as a2a-sdk's `InvalidParamsError` (JSON-RPC -32602, HTTP 400, gRPC
``INVALID_ARGUMENT``) with the server's message, in one place (`AgentRouter`):
a2a-sdk would otherwise answer it as an internal error (-32603, HTTP 500, gRPC
``UNKNOWN``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager

import grpc
import grpc.aio
from a2a.server.context import ServerCallContext
from a2a.server.events.event_queue import Event
from a2a.server.request_handlers import GrpcHandler, RequestHandler
from a2a.types.a2a_pb2 import (
    AgentCard,
    CancelTaskRequest,
    DeleteTaskPushNotificationConfigRequest,
    GetExtendedAgentCardRequest,
    GetTaskPushNotificationConfigRequest,
    GetTaskRequest,
    ListTaskPushNotificationConfigsRequest,
    ListTaskPushNotificationConfigsResponse,
    ListTasksRequest,
    ListTasksResponse,
    Message,
    SendMessageRequest,
    SubscribeToTaskRequest,
    Task,
    TaskPushNotificationConfig,
)
from a2a.utils.errors import (
    A2A_ERROR_REASONS,
    A2AError,
    InvalidParamsError,
    PushNotificationNotSupportedError,
)
from google.protobuf import any_pb2
from google.protobuf.message import Message as ProtoMessage
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from starlette.requests import Request

from packetbus import PacketbusError

from .auth import (
    ContextBuilder,
    CredentialRefused,
    GrpcContextBuilder,
    abort_refused,
    abort_unauthenticated,
    refusal_of,
)
from .handlers import AgentHandlers

# The ASGI scope key (set by the gateway's HTTP app) and the call-state key
# (set by PathAgentContextBuilder) holding the path's agent id.
SCOPE_AGENT = "packetbus_a2a.agent"
PATH_AGENT = "packetbus_a2a.path_agent"


class AgentNotFoundError(A2AError):
    """The call names no registered agent (by tenant, or by default)."""

    message = "agent not found"


class PathAgentContextBuilder(ContextBuilder):
    """a2a-sdk's HTTP call context with the caller (`auth.ContextBuilder`), plus the
    agent id of the request's path."""

    def build(self, request: Request) -> ServerCallContext:
        """The default context with ``state[PATH_AGENT]`` = the path's agent id."""
        context = super().build(request)
        context.state[PATH_AGENT] = request.scope[SCOPE_AGENT]
        return context


class RoutingGrpcHandler(GrpcHandler):
    """a2a-sdk's gRPC servicer with the caller of each call (`auth.GrpcContextBuilder`:
    the ``authorization`` metadata, refused as `auth.credential_problem` says when
    `forwards` / `require_auth`), answering `AgentNotFoundError` with ``NOT_FOUND``, push notifications with
    ``UNIMPLEMENTED`` (the A2A spec's code),
    (a2a-sdk would send an error type it does not know as ``UNKNOWN``), a refused
    credential with ``UNAUTHENTICATED``, and any error of a call that met a
    packetbus refusal with that refusal (a2a-sdk would send ``INTERNAL``).

    The refusals a call meets are kept by the server's interceptor
    (`grpc_server.RefusalInterceptor`), which also answers those a2a-sdk lets through.
    """

    def __init__(
        self, router: AgentRouter, *, forwards: bool = True, require_auth: bool = False
    ) -> None:
        super().__init__(router, GrpcContextBuilder(forwards=forwards, require_auth=require_auth))

    async def abort_context(self, error: A2AError, context: grpc.aio.ServicerContext) -> None:
        """Abort the call with `error`'s code and message (or the refusal's)."""
        refusal = refusal_of(error)
        if refusal is not None:
            await abort_refused(context, refusal)
        if isinstance(error, CredentialRefused):
            await abort_unauthenticated(context, error.message)
        if isinstance(error, AgentNotFoundError):
            await context.abort(grpc.StatusCode.NOT_FOUND, error.message)
        if isinstance(error, PushNotificationNotSupportedError):
            await _abort_unimplemented(context, error)
        await super().abort_context(error, context)


async def _abort_unimplemented(
    context: grpc.aio.ServicerContext, error: PushNotificationNotSupportedError
) -> None:
    """Push notifications refused with ``UNIMPLEMENTED``, the code the A2A spec's
    error table gives PushNotificationNotSupportedError on gRPC (a2a-sdk 1.3 sends
    FAILED_PRECONDITION), with a2a-sdk's ErrorInfo so its client still knows it."""
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(
            reason=A2A_ERROR_REASONS[PushNotificationNotSupportedError],
            domain="a2a-protocol.org",
        )
    )
    status = status_pb2.Status(
        code=grpc.StatusCode.UNIMPLEMENTED.value[0], message=error.message, details=[info]
    )
    rich = rpc_status.to_status(status)
    context.set_trailing_metadata(tuple(rich.trailing_metadata))
    await context.abort(rich.code, rich.details)


class AgentRouter(RequestHandler):
    """Each call to the handler of the agent it is for (see the module docstring).

    `default_agent`: the agent of a gRPC call without a tenant ("" for none).
    """

    def __init__(self, handlers: AgentHandlers, *, default_agent: str = "") -> None:
        self._handlers = handlers
        self._default_agent = default_agent

    async def _pick(self, context: ServerCallContext, params: ProtoMessage) -> RequestHandler:
        """The agent's handler for request `params`. Raises InvalidParamsError when
        the tenant and the path disagree or `params` holds an enum number its enum
        does not define, AgentNotFoundError when the agent is not registered."""
        unknown = _unknown_enum(params)
        if unknown:
            raise InvalidParamsError(message=unknown)
        path_agent = context.state.get(PATH_AGENT)
        if path_agent is not None:
            if context.tenant and context.tenant != path_agent:
                raise InvalidParamsError(
                    message=f"tenant {context.tenant!r} is not the agent of this path "
                    f"({path_agent!r}): leave the tenant empty or make it {path_agent!r}"
                )
            agent_id = str(path_agent)
        else:
            agent_id = context.tenant or self._default_agent
        if not agent_id:
            raise AgentNotFoundError(
                message="the request has no tenant and the gateway no default agent: "
                "set the tenant to the agent id"
            )
        handler = await self._handlers.get(agent_id)
        if handler is None:
            raise AgentNotFoundError(message=f"no agent {agent_id!r} is registered")
        # As the interface: its methods are typed, DefaultRequestHandler's decorated ones not.
        typed: RequestHandler = handler
        return typed

    async def on_get_task(self, params: GetTaskRequest, context: ServerCallContext) -> Task | None:
        """See RequestHandler."""
        with _invalid_params():
            return await (await self._pick(context, params)).on_get_task(params, context)

    async def on_list_tasks(
        self, params: ListTasksRequest, context: ServerCallContext
    ) -> ListTasksResponse:
        """See RequestHandler."""
        with _invalid_params():
            return await (await self._pick(context, params)).on_list_tasks(params, context)

    async def on_cancel_task(
        self, params: CancelTaskRequest, context: ServerCallContext
    ) -> Task | None:
        """See RequestHandler."""
        with _invalid_params():
            return await (await self._pick(context, params)).on_cancel_task(params, context)

    async def on_message_send(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> Task | Message:
        """See RequestHandler."""
        with _invalid_params():
            return await (await self._pick(context, params)).on_message_send(params, context)

    async def on_message_send_stream(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event]:
        """See RequestHandler."""
        with _invalid_params():
            handler = await self._pick(context, params)
            async for event in handler.on_message_send_stream(params, context):
                yield event

    async def on_subscribe_to_task(
        self, params: SubscribeToTaskRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event]:
        """See RequestHandler."""
        with _invalid_params():
            handler = await self._pick(context, params)
            async for event in handler.on_subscribe_to_task(params, context):
                yield event

    async def on_create_task_push_notification_config(
        self, params: TaskPushNotificationConfig, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        """See RequestHandler."""
        with _invalid_params():
            handler = await self._pick(context, params)
            return await handler.on_create_task_push_notification_config(params, context)

    async def on_get_task_push_notification_config(
        self, params: GetTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        """See RequestHandler."""
        with _invalid_params():
            handler = await self._pick(context, params)
            return await handler.on_get_task_push_notification_config(params, context)

    async def on_list_task_push_notification_configs(
        self, params: ListTaskPushNotificationConfigsRequest, context: ServerCallContext
    ) -> ListTaskPushNotificationConfigsResponse:
        """See RequestHandler."""
        with _invalid_params():
            handler = await self._pick(context, params)
            return await handler.on_list_task_push_notification_configs(params, context)

    async def on_delete_task_push_notification_config(
        self, params: DeleteTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> None:
        """See RequestHandler."""
        with _invalid_params():
            handler = await self._pick(context, params)
            await handler.on_delete_task_push_notification_config(params, context)

    async def on_get_extended_agent_card(
        self, params: GetExtendedAgentCardRequest, context: ServerCallContext
    ) -> AgentCard:
        """See RequestHandler."""
        with _invalid_params():
            return await (await self._pick(context, params)).on_get_extended_agent_card(
                params, context
            )


# Codes of a packetbus call refused for a value the caller sent.
_CALLER_FAULTS = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE})


@contextmanager
def _invalid_params() -> Iterator[None]:
    """Raise a PacketbusError for the caller's values (`_CALLER_FAULTS`) as
    InvalidParamsError with its message (see the module docstring); any other
    error goes through unchanged (refusals: `auth`)."""
    try:
        yield
    except PacketbusError as exc:
        if exc.code not in _CALLER_FAULTS:
            raise
        raise InvalidParamsError(message=exc.message) from exc


def _unknown_enum(message: ProtoMessage, path: str = "") -> str:
    """The first enum field of `message` (nested messages included) set to a
    number its enum does not define (proto3 keeps one: a Role of 77 would be
    stored as is), as "<field path> <number> is not a <Enum> value"; "" when
    there is none."""
    for field, value in message.ListFields():
        name = f"{path}{field.name}"
        enum, nested = field.enum_type, field.message_type
        if enum is not None:
            for number in value if field.is_repeated else [value]:
                if number not in enum.values_by_number:
                    return f"{name} {number} is not a {enum.name} value"
        elif nested is not None and not nested.GetOptions().map_entry:
            for item in value if field.is_repeated else [value]:
                found = _unknown_enum(item, f"{name}.")
                if found:
                    return found
    return ""
