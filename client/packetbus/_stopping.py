"""Stopping things the same way everywhere: background tasks, and what `async with` closes."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Any, Self


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` (None: nothing runs) and return once it has stopped.

    Its CancelledError is expected and swallowed; any other error it ends with
    is raised here, so a background loop that failed does not go unnoticed.
    """
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class ClosedOnExit:
    """``async with thing:`` gives the thing itself and awaits ``thing.close()`` on
    the way out, whether the block ended normally or not."""

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
