"""The one way the service helpers (agents, tasks, context, policy) make a unary call:
through `Client._call`, which retries it within its timeout."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from google.protobuf.message import Message

T = TypeVar("T")


class Call(Protocol):
    async def __call__(
        self, method: Callable[..., Awaitable[T]], request: Message, timeout: float | None
    ) -> T: ...


# A timeout (None: the client's default) as a time.monotonic() deadline.
Deadline = Callable[[float | None], float]
