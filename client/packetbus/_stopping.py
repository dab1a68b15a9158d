"""Stopping a background task the same way everywhere."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


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
