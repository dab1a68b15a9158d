"""The door: authenticate each call, authorize it, keep its caller for the call.

`Gate.admit` runs before every servicer method (see _handlers): it proves who
calls (UNAUTHENTICATED when a credential is missing or bad), checks the RPC's
rule in `permissions.RULES` (PERMISSION_DENIED with an ErrorInfo naming the
permission and the resource), and keeps the principal in a context variable for
the rest of the call: `caller()`, `allows()` and `require()` read it, so services
check what only they can see without the gate passed down to each of them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Any, NoReturn, Protocol

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from .. import _status
from .permissions import RULES, Permission
from .principal import (
    BAD_NAME,
    LOCAL,
    Authenticator,
    Principal,
    Unauthenticated,
    default_agent_id,
    name_problem,
)


class Authorizer(Protocol):
    """What the policy file's `[authorization]` section grants."""

    @property
    def enabled(self) -> bool:
        """False: every authenticated principal may do everything."""
        ...

    def allows(self, principal: Principal, permission: Permission, resource: str) -> bool: ...

    def agent_id(self, name: str) -> str | None:
        """The agent id the policy maps principal `name` to, if it maps one."""
        ...


class _AllowAll:
    enabled = False

    def allows(self, principal: Principal, permission: Permission, resource: str) -> bool:
        return True

    def agent_id(self, name: str) -> str | None:
        return None


ALLOW_ALL: Authorizer = _AllowAll()

_CALLER: ContextVar[Principal | None] = ContextVar("packetbus_caller", default=None)
_GATE: ContextVar[Gate | None] = ContextVar("packetbus_gate", default=None)

# A stream keeps what it was let in for; more than this many distinct checks and
# the rest are not kept (a stream makes a handful: its rule, an inbox binding).
MAX_KEPT_CHECKS = 256


@dataclasses.dataclass(slots=True)
class _Admitted:
    """What let a streaming call in, so that it can be judged again while it runs:
    each allowed (permission, resource) and each agent id it acted as, and the
    authorizer that allowed them and mapped the caller's agent id (None until the
    caller is authenticated or a check is made)."""

    checks: set[tuple[Permission, str]] = dataclasses.field(default_factory=set)
    acted_as: set[str] = dataclasses.field(default_factory=set)
    authorizer: Authorizer | None = None
    # The caller as a reloaded policy maps it (None: as admitted). Kept here, not
    # only in _CALLER: a call's tasks (DispatchStream serves each batch in one)
    # each hold a copy of the context, and a variable set in one reaches no other.
    principal: Principal | None = None

    def keep(self, authorizer: Authorizer, check: tuple[Permission, str]) -> None:
        if self.authorizer is None:
            self.authorizer = authorizer
        if len(self.checks) < MAX_KEPT_CHECKS:
            self.checks.add(check)

    def keep_acting(self, authorizer: Authorizer, agent_id: str) -> None:
        if self.authorizer is None:
            self.authorizer = authorizer
        if len(self.acted_as) < MAX_KEPT_CHECKS:
            self.acted_as.add(agent_id)


_ADMITTED: ContextVar[_Admitted | None] = ContextVar("packetbus_admitted", default=None)


class Gate:
    """Authenticates with `authenticators` (the first that finds its credential
    decides; none configured: every call is LOCAL) and authorizes with the
    authorizer `authorizer()` returns at the time of the call (the policy file is
    reloaded while the server runs)."""

    def __init__(
        self,
        authenticators: Sequence[Authenticator] = (),
        authorizer: Callable[[], Authorizer] = lambda: ALLOW_ALL,
    ) -> None:
        self._authenticators = tuple(authenticators)
        self._authorizer = authorizer

    @property
    def authenticates(self) -> bool:
        return bool(self._authenticators)

    @property
    def authorizer(self) -> Authorizer:
        return self._authorizer()

    async def admit(
        self, method: str, request: Any, context: grpc.aio.ServicerContext
    ) -> Principal:
        """Admit a call of `method` ("package.Service/Method") with `request` (None
        for a client stream: its rule is then checked in the service), or abort it."""
        principal = await self._authenticate(context)
        _GATE.set(self)
        _CALLER.set(principal)
        rule = RULES.get(method)
        if rule is None or rule.permission is None or rule.in_service or request is None:
            return principal
        if rule.resource is not None:
            resource = rule.resource(request)
            if not self.permits(principal, rule.permission, resource):
                await deny(context, principal, rule.permission, resource)
        return principal

    async def _authenticate(self, context: grpc.aio.ServicerContext) -> Principal:
        if not self._authenticators:
            return LOCAL
        for authenticator in self._authenticators:
            try:
                principal = authenticator.authenticate(context)
            except Unauthenticated as exc:
                await _abort(context, grpc.StatusCode.UNAUTHENTICATED, str(exc), exc.reason, {})
            if principal is not None:
                problem = name_problem(principal.name)
                if problem is not None:
                    # Said without the name: it may be anything the credential holds.
                    await _abort(context, grpc.StatusCode.UNAUTHENTICATED, problem, BAD_NAME, {})
                # A TLS connection outlives its client certificate: the handshake
                # checked notAfter once, each call on the connection checks it here.
                await _refuse_expired(context, principal, "has expired: renew it (and reconnect)")
                authorizer = self.authorizer
                admitted = _ADMITTED.get()
                if admitted is not None and admitted.authorizer is None:
                    # The policy that mapped its agent id: a stream judged nothing
                    # else yet is still mapped anew by a reload (recheck).
                    admitted.authorizer = authorizer
                return _as_mapped(authorizer, principal)
        await _abort(
            context,
            grpc.StatusCode.UNAUTHENTICATED,
            "no credential: this server needs a client certificate or a bearer token",
            "CREDENTIAL_MISSING",
            {},
        )

    def permits(self, principal: Principal, permission: Permission, resource: str) -> bool:
        if principal is LOCAL:
            return True
        authorizer = self.authorizer
        allowed = not authorizer.enabled or authorizer.allows(principal, permission, resource)
        admitted = _ADMITTED.get()
        if allowed and admitted is not None:
            admitted.keep(authorizer, (permission, resource))
        return allowed


def _as_mapped(authorizer: Authorizer, principal: Principal) -> Principal:
    """`principal` with the agent id `authorizer`'s policy maps its name to (its
    default one, from its name, when the policy maps none)."""
    mapped = authorizer.agent_id(principal.name)
    agent_id = default_agent_id(principal.name) if mapped is None else mapped
    if agent_id == principal.agent_id:
        return principal
    return dataclasses.replace(principal, agent_id=agent_id)


async def _refuse_expired(
    context: grpc.aio.ServicerContext, principal: Principal, what_now: str
) -> None:
    """Abort UNAUTHENTICATED (CREDENTIAL_EXPIRED) once `principal`'s credential has
    expired; the message says "the <source> credential of principal <name> <what_now>"."""
    if principal.expires_at is not None and time.time() >= principal.expires_at:
        await _abort(
            context,
            grpc.StatusCode.UNAUTHENTICATED,
            f"the {principal.source} credential of principal {principal.name!r} {what_now}",
            "CREDENTIAL_EXPIRED",
            {"principal": principal.name},
        )


def caller() -> Principal | None:
    """The authenticated principal of the running call (None outside a call)."""
    return _principal()


def _principal() -> Principal | None:
    """The running call's principal: as a reload mapped it anew (`recheck`), in
    whichever of the call's tasks that happened, else as the gate admitted it."""
    admitted = _ADMITTED.get()
    if admitted is not None and admitted.principal is not None:
        return admitted.principal
    return _CALLER.get()


def authorizer() -> Authorizer | None:
    """The authorizer judging the running call (None outside a call)."""
    gate = _GATE.get()
    return None if gate is None else gate.authorizer


def allows(permission: Permission, resource: str) -> bool:
    """Whether the running call's principal holds `permission` on `resource`."""
    gate, principal = _GATE.get(), _principal()
    if gate is None or principal is None:
        return True  # not inside a call the gate admitted (the server's own work)
    return gate.permits(principal, permission, resource)


def authorizing() -> bool:
    """Whether the running call is judged by an `[authorization]` section at all: an
    authenticated (not LOCAL) caller, with authorization on. False outside a call."""
    gate, principal = _GATE.get(), _principal()
    return (
        gate is not None
        and principal is not None
        and principal is not LOCAL
        and gate.authorizer.enabled
    )


def may_act_as(agent_id: str) -> bool:
    """Whether the running call may name `agent_id` as itself (a packet's origin, an
    agent to register or a memory to write): its own agent id, or one it holds
    agents.act_for on. Always true while authorization is off."""
    gate, principal = _GATE.get(), _principal()
    if gate is None or principal is None or principal is LOCAL:
        return True
    authorizer = gate.authorizer
    allowed = (
        not authorizer.enabled
        or (principal.agent_id != "" and principal.agent_id == agent_id)
        # Not gate.permits: kept below as "acted as", judged again as such (by a
        # re-mapped agent id too), not as a grant of agents.act_for.
        or authorizer.allows(principal, Permission.AGENTS_ACT_FOR, agent_id)
    )
    admitted = _ADMITTED.get()
    if allowed and admitted is not None:
        admitted.keep_acting(authorizer, agent_id)
    return allowed


def watch_call() -> None:
    """Keep what lets the running call in (from now on), for `recheck`: a streaming
    call calls this before the gate admits it."""
    _ADMITTED.set(_Admitted())


async def recheck(context: grpc.aio.ServicerContext) -> None:
    """Judge a streaming call again before it sends more: abort it UNAUTHENTICATED
    (CREDENTIAL_EXPIRED) once its credential has expired, and PERMISSION_DENIED
    (as the gate would) when the policy in force is no longer the one that let it
    in and the new one no longer allows what it was let in for.

    Why: a stream outlives the moment it was admitted (a Subscribe or a Pull runs
    for hours); a revoked grant or an expired token must end it, as they refuse
    the next unary call. Cost while nothing changed: a clock read and a compare.
    """
    admitted, gate, principal = _ADMITTED.get(), _GATE.get(), _principal()
    if admitted is None or gate is None or principal is None or principal is LOCAL:
        return
    await _refuse_expired(
        context, principal, "expired while this stream was open: renew it and open the stream again"
    )
    authorizer = gate.authorizer
    if admitted.authorizer is None or authorizer is admitted.authorizer:
        admitted.authorizer = authorizer
        return
    # A reloaded policy: who the principal is (its agent id may be mapped anew) and
    # every check that let the call in, judged by it.
    remapped = _as_mapped(authorizer, principal)
    if remapped != principal:
        principal = admitted.principal = remapped
    # The checks below run with _ADMITTED unset, so they read _CALLER: in this task
    # it may still hold the caller as admitted (another task mapped it anew).
    _CALLER.set(principal)
    checks, acted_as = sorted(admitted.checks), sorted(admitted.acted_as)
    _ADMITTED.set(None)  # judging again is not keeping anew
    try:
        for permission, resource in checks:
            if not gate.permits(principal, permission, resource):
                await deny(context, principal, permission, resource)
        for acted in acted_as:
            if not may_act_as(acted):
                await deny(context, principal, Permission.AGENTS_ACT_FOR, acted)
    finally:
        _ADMITTED.set(admitted)
    admitted.authorizer = authorizer


async def require(context: grpc.aio.ServicerContext, permission: Permission, resource: str) -> None:
    """Abort the call with PERMISSION_DENIED unless its principal holds `permission`
    on `resource`."""
    if not allows(permission, resource):
        principal = _principal()
        assert principal is not None
        await deny(context, principal, permission, resource)


def denial(principal: Principal, permission: Permission, resource: str) -> status_pb2.Status:
    """The google.rpc.Status of a refusal: PERMISSION_DENIED with an ErrorInfo
    (reason PERMISSION_DENIED; metadata permission, resource, principal), as a
    per-packet result or as the trailer of a failed call."""
    # An empty resource (a listing over all) was shown as '*', read as a literal
    # resource name: say what it is, and as `packetbus policy can` takes it ('').
    target = repr(resource) if resource else "'' (all of them: only a grant on '*' allows it)"
    message = f"principal {principal.name!r} lacks permission {permission.value} on {target}"
    return _rich(
        code_pb2.PERMISSION_DENIED,
        message,
        "PERMISSION_DENIED",
        {"permission": permission.value, "resource": resource, "principal": principal.name},
    )


async def deny(
    context: grpc.aio.ServicerContext,
    principal: Principal,
    permission: Permission,
    resource: str,
) -> NoReturn:
    await _status.abort_with(context, denial(principal, permission, resource))


def _rich(code: int, message: str, reason: str, metadata: dict[str, str]) -> status_pb2.Status:
    packed = any_pb2.Any()
    packed.Pack(
        error_details_pb2.ErrorInfo(reason=reason, domain=_status.ERROR_DOMAIN, metadata=metadata)
    )
    return status_pb2.Status(code=code, message=message, details=[packed])


async def _abort(
    context: grpc.aio.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    reason: str,
    metadata: dict[str, str],
) -> NoReturn:
    await _status.abort_with(context, _rich(code.value[0], message, reason, metadata))


__all__ = [
    "ALLOW_ALL",
    "Authorizer",
    "Gate",
    "allows",
    "authorizing",
    "caller",
    "default_agent_id",
    "denial",
    "deny",
    "may_act_as",
    "recheck",
    "require",
    "watch_call",
]
