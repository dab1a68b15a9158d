"""SyncClient shared by threads (README: "Nothing waits forever on a closed client ...
(`SyncClient` too)"): closed from several threads at once while others call it,
every closer returns and every caller gets PacketbusError CANCELLED; a call made
from the client's own loop thread (a callback) is refused instead of waiting forever.

The in-process server runs on the test's event loop, so the blocking clients run in
worker threads, as they would in a program without asyncio.
"""

from __future__ import annotations

import asyncio
import threading

import packetbus


def _close_while_called(target: str) -> tuple[list[str], int, int]:
    """Four threads call the client in a loop while three close it at once; the
    callers' outcomes, and how many callers and closers were still stuck after 5 s."""
    bus = packetbus.SyncClient.connect(target, timeout=10)
    outcomes: list[str] = []
    started = threading.Barrier(5)

    def call() -> None:
        started.wait()
        try:
            while True:
                bus.server_info(timeout=5)
        except packetbus.PacketbusError as error:
            outcomes.append(error.code.name)

    callers = [threading.Thread(target=call, daemon=True) for _ in range(4)]
    for thread in callers:
        thread.start()
    started.wait()
    closers = [threading.Thread(target=bus.close, daemon=True) for _ in range(3)]
    for thread in closers:
        thread.start()
    for thread in closers + callers:
        thread.join(5)
    return (
        outcomes,
        sum(t.is_alive() for t in callers),
        sum(t.is_alive() for t in closers),
    )


async def test_closing_from_several_threads_while_others_call_never_hangs(target: str) -> None:
    for _ in range(10):  # the race is between a loop that stops and a call scheduled on it
        outcomes, stuck_callers, stuck_closers = await asyncio.to_thread(
            _close_while_called, target
        )
        assert (stuck_callers, stuck_closers) == (0, 0)
        assert outcomes == ["CANCELLED"] * 4


async def test_a_call_from_the_clients_own_thread_is_refused_not_a_deadlock(
    target: str,
) -> None:
    def blocking() -> str:
        with packetbus.SyncClient.connect(target, timeout=10) as bus:
            seen: list[str] = []

            def on_loop() -> None:
                # A callback (on_gap, ...) runs on the client's loop thread.
                try:
                    bus.server_info(timeout=1)
                except RuntimeError as error:
                    seen.append(str(error))

            done = threading.Event()

            def callback() -> None:
                on_loop()
                done.set()

            bus._loop.call_soon_threadsafe(callback)
            assert done.wait(5)
            return seen[0]

    message = await asyncio.to_thread(blocking)
    assert "its own event loop's thread" in message
