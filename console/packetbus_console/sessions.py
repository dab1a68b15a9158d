"""Signed-in sessions: an opaque cookie value -> the caller's packetbus token.

``POST /api/session`` with ``{"token": "<JWT>"}`` checks the token by a real
packetbus call under it (GetServerInfo: every principal may make it, and an
UNAUTHENTICATED answer means the server refused the token), then keeps it here
under a random session id (32 random bytes, URL-safe base64) sent as the cookie
`COOKIE` (HttpOnly, SameSite=Strict, Path=/, Secure when the console serves
HTTPS). The token never leaves the server again: it is not logged, echoed, or put
in the cookie.

Bounded memory: at most `MAX_SESSIONS` sessions; a new one beyond that drops the
one that expires first. A session ends at the token's ``exp`` claim (read, not
verified: the packetbus server verifies the token on every call), or after
`MAX_LIFETIME` seconds when the token has none, or at sign-out.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from dataclasses import dataclass

from packetbus import Client

COOKIE = "packetbus_console_session"
MAX_SESSIONS = 1024
MAX_LIFETIME = 12 * 3600.0  # seconds, for a token without exp
MAX_TOKEN_CHARS = 16_384


class BadToken(ValueError):
    """A sign-in token that is not a JWS compact JWT (answered 401)."""


def token_expiry(token: str, now: float) -> float:
    """When a session for JWT `token` ends (s since the epoch): its ``exp`` claim,
    at most `MAX_LIFETIME` from `now`. Raises BadToken for a value that is not a
    JWT (three base64url parts, a JSON object payload) or that has expired."""
    if not 0 < len(token) <= MAX_TOKEN_CHARS or token.count(".") != 2 or not token.isascii():
        raise BadToken("the token is not a JWT")
    payload = token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise BadToken("the token's payload is not JSON") from exc
    if not isinstance(claims, dict):
        raise BadToken("the token's payload is not a JSON object")
    exp = claims.get("exp")
    if exp is None:
        return now + MAX_LIFETIME
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise BadToken("the token's exp is not a number")
    if exp <= now:
        raise BadToken("the token has expired")
    return min(float(exp), now + MAX_LIFETIME)


@dataclass(slots=True)
class Session:
    """One signed-in caller: `client` makes its calls (a view carrying its token)."""

    client: Client
    expires_at: float


class Sessions:
    """The sessions of one console (see the module docstring)."""

    def __init__(self, *, max_sessions: int = MAX_SESSIONS) -> None:
        self._max = max_sessions
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, view: Client, expires_at: float) -> str:
        """A new session calling with `view` (``base.with_token(token)``) until
        `expires_at`; its id (the cookie value)."""
        self._drop_expired(time.time())
        while len(self._sessions) >= self._max:
            first = min(self._sessions, key=lambda key: self._sessions[key].expires_at)
            del self._sessions[first]
        session_id = secrets.token_urlsafe(32)
        self._sessions[session_id] = Session(view, expires_at)
        return session_id

    def get(self, session_id: str | None) -> Session | None:
        """The live session `session_id` names; None (and it is dropped) once expired."""
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is not None and session.expires_at <= time.time():
            del self._sessions[session_id]
            return None
        return session

    def close(self, session_id: str | None) -> bool:
        """End session `session_id`; whether there was one."""
        return bool(session_id) and self._sessions.pop(str(session_id), None) is not None

    def _drop_expired(self, now: float) -> None:
        for key in [k for k, s in self._sessions.items() if s.expires_at <= now]:
            del self._sessions[key]
