"""The authenticated caller of a call, and what authenticators share."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Protocol

import grpc


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a call, as its credential proved it.

    `name`: the identity (a SPIFFE ID such as ``spiffe://example.org/agent/planner``,
    a certificate's subject CN, or a JWT's ``sub``); `source`: how it was proved
    (``mtls``, ``jwt``, ``xfcc`` or ``local``); `agent_id`: the agent id this
    principal is (the policy may map a principal to one; else the last path segment
    of a SPIFFE ID, else `name`); `expires_at`: the wall time (s since the epoch)
    after which the credential no longer proves it (a JWT's exp plus the leeway, a
    client certificate's notAfter), None when it does not say. A stream opened
    with the credential ends there (gate.recheck).
    """

    name: str
    source: str
    agent_id: str
    expires_at: float | None = field(default=None, compare=False)


# A server with no authentication configured (loopback, the README's two commands):
# every caller is this principal, and it may do anything.
LOCAL = Principal(name="local", source="local", agent_id="")


class Unauthenticated(Exception):
    """A credential was presented and is not good (expired, forged, wrong audience,
    not signed by a trusted CA, ...): the call is UNAUTHENTICATED with `reason` (an
    ErrorInfo reason, e.g. TOKEN_EXPIRED) and the message, never its secret."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Authenticator(Protocol):
    """One way of proving who calls."""

    def authenticate(self, context: grpc.aio.ServicerContext) -> Principal | None:
        """The principal `context`'s credential proves; None when the call carries no
        credential of this kind. Raises Unauthenticated for a bad one."""
        ...


def default_agent_id(name: str) -> str:
    """The agent id of a principal the policy does not map: a SPIFFE ID's last path
    segment (``spiffe://example.org/agent/planner`` is ``planner``), else `name`."""
    if name.startswith("spiffe://"):
        path = name[len("spiffe://") :].partition("/")[2]
        return path.rstrip("/").rpartition("/")[2] or name
    return name


# A principal's name is written into custody records and printed by the CLI
# (`custody verify`: "... by <actor> for <principal>"), so it must stay one plain
# line: no control characters (C0, DEL, C1), no line or paragraph separators, no
# bidirectional overrides that reorder what a reader sees (Trojan Source).
MAX_NAME_CHARS = 1024
_BIDI_CONTROLS = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# Unauthenticated's reason for a credential that names no usable principal.
BAD_NAME = "PRINCIPAL_INVALID"


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a principal's name, or None: 1-MAX_NAME_CHARS
    characters, none a control character, a line separator or a bidi control."""
    if not 0 < len(name) <= MAX_NAME_CHARS:
        return f"the principal's name is not 1-{MAX_NAME_CHARS} characters"
    if name.isprintable() and not _BIDI_CONTROLS.search(name):
        return None
    for char in name:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp") or _BIDI_CONTROLS.match(char):
            return (
                f"the principal's name holds U+{ord(char):04X}: control characters, line "
                "separators and bidi controls are refused"
            )
    return None
