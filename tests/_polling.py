"""Polling with a deadline, for conditions the tests cannot await directly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(condition: Callable[[], bool], timeout: float = 10.0, every: float = 0.05) -> float:
    """Wait until `condition()` holds; the seconds it took. AssertionError after `timeout`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(every)
    return time.monotonic() - started
