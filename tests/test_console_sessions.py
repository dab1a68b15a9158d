"""The console's session store and sign-in token checks (packetbus_console.sessions).

Against a real server: each session's client is a real `Client.with_token` view of
a loopback connection (the store never calls it)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator

import pytest

import packetbus
from packetbus_console.sessions import MAX_LIFETIME, BadToken, Sessions, token_expiry


def _jwt(claims: object) -> str:
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJFZERTQSJ9.{payload}.c2ln"


@pytest.fixture
async def base(target: str) -> AsyncIterator[packetbus.Client]:
    async with await packetbus.Client.connect(target, token=None) as client:
        yield client


def test_token_expiry_is_the_exp_claim_capped_and_bad_tokens_are_refused() -> None:
    now = time.time()
    assert token_expiry(_jwt({"sub": "a", "exp": now + 60}), now) == now + 60
    assert token_expiry(_jwt({"sub": "a"}), now) == now + MAX_LIFETIME
    assert token_expiry(_jwt({"sub": "a", "exp": now + 10 * MAX_LIFETIME}), now) == (
        now + MAX_LIFETIME
    )
    for bad, why in (
        ("abc", "the token is not a JWT"),
        ("a.b.c", "the token's payload is not JSON"),
        (_jwt([1]), "the token's payload is not a JSON object"),
        (_jwt({"exp": "soon"}), "the token's exp is not a number"),
        (_jwt({"exp": now - 1}), "the token has expired"),
        ("x" * 20_000, "the token is not a JWT"),
    ):
        with pytest.raises(BadToken) as refused:
            token_expiry(bad, now)
        assert str(refused.value) == why


async def test_the_store_is_bounded_drops_the_first_to_expire_and_ends_sessions(
    base: packetbus.Client,
) -> None:
    sessions = Sessions(max_sessions=3)
    now = time.time()
    view = base.with_token(_jwt({"sub": "a"}))
    ids = [sessions.open(view, now + 100 + i) for i in (5, 1, 9)]
    assert len(set(ids)) == 3
    assert all(len(i) >= 43 for i in ids)
    fourth = sessions.open(view, now + 200)
    assert len(sessions) == 3
    assert sessions.get(ids[1]) is None  # the one expiring first made room
    assert [sessions.get(i) is not None for i in (ids[0], ids[2], fourth)] == [True] * 3

    expired = sessions.open(view, time.time() - 1)
    assert sessions.get(expired) is None
    assert sessions.close(fourth) is True
    assert sessions.close(fourth) is False
    assert sessions.get(fourth) is None
    assert sessions.get(None) is None
    assert sessions.close("") is False
