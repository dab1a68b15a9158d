"""Client settings: frozen, keyword-only, with defaults that suit most agents."""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ._custody import Signer
from ._security import TlsSettings, Token, tls_from_env, token_from_env

DEFAULT_TARGET = "127.0.0.1:50051"
TARGET_ENV = "PACKETBUS_TARGET"


def default_target() -> str:
    return os.environ.get(TARGET_ENV) or DEFAULT_TARGET


@dataclass(frozen=True, kw_only=True)
class BatchSettings:
    """How `Client.dispatch` groups packets into Dispatch calls.

    Packets dispatched while no batch is in flight are sent at once (those of
    one event loop turn together); packets that arrive behind a batch in flight
    wait for it and go out together when it completes, or `max_latency` seconds
    after the first of them (beside it, up to `max_concurrent_batches` calls), or
    as soon as they fill `max_packets` packets or `max_bytes` bytes.
    Flow control: once `max_outstanding_packets` or `max_outstanding_bytes` are
    waiting or in flight, `dispatch` waits for room instead of buffering more.
    `use_stream`: send the batches over one long-lived DispatchStream per
    connection (a message on an open stream costs the server about half of a
    call), falling back to unary Dispatch calls against a server without it;
    False: a unary Dispatch call per batch.
    """

    max_packets: int = 500
    max_bytes: int = 4 * 1024 * 1024
    max_latency: float = 0.005
    max_concurrent_batches: int = 4
    max_outstanding_packets: int = 20_000
    max_outstanding_bytes: int = 64 * 1024 * 1024
    use_stream: bool = True


@dataclass(frozen=True, kw_only=True)
class RetrySettings:
    """Backoff for retrying UNAVAILABLE.

    Unary calls retry until their timeout is spent: those the server answers the
    same when repeated (dispatch, by tracking id, and most others: see
    `packetbus._retry_policy.POLICY`; a consumer's settlements too); the few it
    does not (requeue a carcel entry, deregister an agent) only when the request
    surely never reached the server. A call that fails after retries says in
    `PacketbusError.outcome_unknown` whether it may have taken effect. A
    subscription reconnects, resuming after its last cursor, until it has failed
    to reach the server for `reconnect_window` seconds in a row.
    """

    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0
    reconnect_window: float = 60.0


@dataclass(frozen=True)
class AgentIdentity:
    """An agent id and its Ed25519 key: a client with one signs the origin of the
    packets it dispatches from that agent (schema "1.1")."""

    agent_id: str
    signer: Signer

    @classmethod
    def generate(cls, agent_id: str) -> AgentIdentity:
        return cls(agent_id, Signer.generate())

    @classmethod
    def load(cls, path: str | Path) -> AgentIdentity:
        """From a key file written by `save` (or `packetbus keys new-agent`)."""
        try:
            doc = json.loads(Path(path).read_text())
            return cls(doc["agent_id"], Signer(base64.b64decode(doc["seed"], validate=True)))
        except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise ValueError(f"{path} is not an agent key file: {exc}") from exc

    def save(self, path: str | Path) -> None:
        """Write the private key to `path`, readable by its owner only."""
        doc = {
            "agent_id": self.agent_id,
            "key_id": self.signer.key_id,
            "seed": base64.b64encode(self.signer.seed).decode(),
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2)


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    target: str = field(default_factory=default_target)
    # Sign the origin of packets from this agent (see AgentIdentity).
    identity: AgentIdentity | None = None
    # Used by calls that are not given timeout=.
    default_timeout: float = 30.0
    # TCP connections dispatch batches are spread over; more than one lets a
    # server run with several workers (`serve --workers N`) use all of them.
    connections: int = 1
    # Against a server with several workers, connect to the worker it assigns
    # (each has a port of its own besides the shared one), so clients spread
    # evenly over the workers rather than as the kernel hashes connections.
    spread_over_workers: bool = True
    batching: BatchSettings = field(default_factory=BatchSettings)
    retry: RetrySettings = field(default_factory=RetrySettings)
    max_message_bytes: int = 16 * 1024 * 1024
    # TLS to the server (default: from PACKETBUS_TLS_*; None: plain text). See _security.
    tls: TlsSettings | None = field(default_factory=tls_from_env)
    # A bearer token (a JWT, or a callable returning the current one), sent on every
    # call over TLS or to a loopback/unix target only (default: PACKETBUS_TOKEN, else
    # PACKETBUS_TOKEN_FILE re-read when it changes). Never shown in a repr.
    token: Token | None = field(default_factory=token_from_env, repr=False)
