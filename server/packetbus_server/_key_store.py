"""The public key registry in Redis: servers' keys and agents' registered keys."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from typing import Any

from packetbus.v1 import custody_pb2

from . import _keys, _scripts
from ._retry import with_retries
from ._scripts import RedisClient


class Registration(enum.Enum):
    REGISTERED = "registered"
    EXISTS = "exists"
    TAKEN = "taken"
    NEEDS_ENDORSEMENT = "needs_endorsement"
    # The agent's keys are bound to another principal, which the caller may not act as.
    BOUND = "bound"


class KeyStore:
    def __init__(self, redis: RedisClient, *, retry_budget: float) -> None:
        self._redis = redis
        self._retry_budget = retry_budget

    async def publish(
        self, keys: Iterable[custody_pb2.SigningKey], *, budget_seconds: float | None = None
    ) -> None:
        """Store `keys` in the signing-key hash, retried for `budget_seconds` (default:
        the store's retry budget). Raises StoreUnavailableError when retries run out."""
        mapping = {k.key_id: k.SerializeToString(deterministic=True) for k in keys}
        if mapping:
            await with_retries(
                lambda: self._redis.hset(_keys.SIGNING_KEYS, mapping=mapping),  # type: ignore[arg-type]
                budget_seconds=self._retry_budget if budget_seconds is None else budget_seconds,
            )

    async def get_many(self, key_ids: Sequence[str]) -> dict[str, custody_pb2.SigningKey]:
        wanted = sorted(set(key_ids))
        if not wanted:
            return {}
        values: Any = await with_retries(
            lambda: self._redis.hmget(_keys.SIGNING_KEYS, wanted),
            budget_seconds=self._retry_budget,
        )
        return {
            key_id: custody_pb2.SigningKey.FromString(raw)
            for key_id, raw in zip(wanted, values, strict=True)
            if raw is not None
        }

    async def all(self) -> dict[str, custody_pb2.SigningKey]:
        values: Any = await with_retries(
            lambda: self._redis.hgetall(_keys.SIGNING_KEYS), budget_seconds=self._retry_budget
        )
        keys = (custody_pb2.SigningKey.FromString(raw) for raw in values.values())
        return {k.key_id: k for k in keys}

    async def register_agent(
        self,
        key: custody_pb2.SigningKey,
        *,
        endorsing_key_id: str,
        principal: str = "",
        may_act: bool = True,
    ) -> Registration:
        """Bind `key` to its owner agent (scripts/register_agent_key.lua, one script on
        the {keys} slot, safe to retry). `principal`: the authenticated caller's name
        ("" for none: the local principal), which the agent's keys are bound to on
        its first key; `may_act`: whether the caller may act as the agent anyway
        (False only with authorization on). Raises what the store's retries give up
        on (see _retry)."""
        reply = await with_retries(
            lambda: _scripts.REGISTER_AGENT_KEY.run(
                self._redis,
                [_keys.SIGNING_KEYS, _keys.AGENT_KEYS, _keys.AGENT_KEY_PRINCIPALS],
                [
                    key.owner,
                    key.key_id,
                    key.SerializeToString(deterministic=True),
                    endorsing_key_id,
                    principal,
                    "1" if may_act else "0",
                ],
            ),
            budget_seconds=self._retry_budget,
        )
        status = reply[0]
        return Registration(status.decode() if isinstance(status, bytes) else status)
