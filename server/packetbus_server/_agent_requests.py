"""AgentService request checks: a registration's fields (each broken rule a
Violation: field path, rule, message, for _status.abort_invalid) and its key proof."""

from __future__ import annotations

import grpc

from packetbus import _custody, _ed25519
from packetbus.v1 import agent_service_pb2 as pb
from packetbus.v1 import custody_pb2

from . import _status
from ._agent_store import AgentStore
from ._clock import StoreClock
from ._field_rules import MAX_SHORT_TEXT, validate_agent_id, validate_id
from ._fields import utf8_length
from ._key_store import KeyStore
from ._limits import Limits
from ._storage_errors import storage_errors
from ._validation import Violation

_MAX_LONG_TEXT = 1024


def check_text(out: list[Violation], path: str, value: str, max_length: int) -> None:
    """Checks a free text field: at most `max_length` bytes (UTF-8), printable."""
    if utf8_length(value) > max_length:
        out.append(Violation(path, "LENGTH", f"must be at most {max_length} bytes (UTF-8)"))
    elif value and not value.isprintable():
        out.append(Violation(path, "CHARSET", "must not contain control characters"))


def registration_violations(request: pb.RegisterAgentRequest, limits: Limits) -> list[Violation]:
    """What is wrong with a registration (the agent's fields, its key and proof);
    empty when nothing is."""
    out: list[Violation] = []
    agent = request.agent
    validate_agent_id(out, "agent.id", agent.id)
    check_text(out, "agent.role", agent.role, MAX_SHORT_TEXT)
    if len(agent.capabilities) > limits.max_agent_capabilities:
        out.append(
            Violation(
                "agent.capabilities",
                "COUNT",
                f"at most {limits.max_agent_capabilities}; got {len(agent.capabilities)}",
            )
        )
    seen: set[str] = set()
    for i, capability in enumerate(agent.capabilities):
        validate_id(out, f"agent.capabilities[{i}]", capability)
        if capability in seen:
            out.append(Violation(f"agent.capabilities[{i}]", "DUPLICATE", "listed twice"))
        seen.add(capability)
    if agent.parent_id:
        validate_agent_id(out, "agent.parent_id", agent.parent_id)
        if agent.parent_id == agent.id:
            out.append(Violation("agent.parent_id", "SELF_PARENT", "must not be the agent"))
    if len(agent.labels) > limits.max_agent_labels:
        out.append(
            Violation(
                "agent.labels",
                "COUNT",
                f"at most {limits.max_agent_labels}; got {len(agent.labels)}",
            )
        )
    for name in sorted(agent.labels):
        validate_id(out, f"agent.labels[{name!r}]", name)
        check_text(out, f"agent.labels[{name!r}]", agent.labels[name], _MAX_LONG_TEXT)
    check_text(out, "agent.endpoint", agent.endpoint, _MAX_LONG_TEXT)
    check_text(out, "agent.state", agent.state, MAX_SHORT_TEXT)
    ttl = agent.heartbeat_ttl_seconds
    if ttl and not limits.min_agent_ttl_seconds <= ttl <= limits.max_agent_ttl_seconds:
        out.append(
            Violation(
                "agent.heartbeat_ttl_seconds",
                "RANGE",
                f"must be {limits.min_agent_ttl_seconds}..{limits.max_agent_ttl_seconds} "
                f"(0: {limits.default_agent_ttl_seconds}); got {ttl}",
            )
        )
    server_set = [name for name in ("key_id", "liveness") if getattr(agent, name)] + [
        name for name in ("registered_at", "last_heartbeat_at", "deadline") if agent.HasField(name)
    ]
    for name in server_set:
        out.append(Violation(f"agent.{name}", "OUTPUT_ONLY", "is set by the server"))
    if request.public_key:
        problem = _ed25519.public_key_problem(request.public_key)
        if problem:
            out.append(Violation("public_key", "PUBLIC_KEY", problem))
        if len(request.public_key_proof) != _ed25519.SIGNATURE_BYTES:
            out.append(
                Violation(
                    "public_key_proof",
                    "SIGNATURE_LENGTH",
                    f"must be {_ed25519.SIGNATURE_BYTES} bytes",
                )
            )
    elif request.public_key_proof:
        out.append(Violation("public_key", "REQUIRED", "a proof needs its public key"))
    return out


async def check_agent_key(
    context: grpc.aio.ServicerContext,
    request: pb.RegisterAgentRequest,
    *,
    key_store: KeyStore,
    store: AgentStore,
    clock: StoreClock,
) -> custody_pb2.SigningKey | None:
    """The agent's key to register, once its proof verifies and it can be bound
    (nothing is written here)."""
    agent_id, public_key = request.agent.id, request.public_key
    if not public_key:
        return None
    message = _custody.agent_key_message(agent_id, public_key)
    if not _ed25519.verify(public_key, message, request.public_key_proof):
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            "public_key_proof does not verify: sign the agent-key message with the key "
            "being registered",
        )
    key = custody_pb2.SigningKey(
        key_id=_custody.key_id_for(public_key),
        public_key=public_key,
        owner_kind=custody_pb2.KEY_OWNER_KIND_AGENT,
        owner=agent_id,
    )
    key.valid_from.FromNanoseconds(clock.now_ns())
    async with storage_errors(context):
        found = await key_store.get_many([key.key_id])
        owned = await store.agent_key_ids(agent_id)
    existing = found.get(key.key_id)
    if existing is not None and existing.owner != agent_id:
        await _status.abort_with_reason(
            context,
            grpc.StatusCode.ALREADY_EXISTS,
            f"key {key.key_id} is already registered to another owner",
            "KEY_ID_IN_USE",
        )
    if owned and key.key_id not in owned:
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"agent {agent_id!r} already has another key; register a new one with "
            "CustodyService.RegisterAgentKey, endorsed by the old one",
        )
    return key
