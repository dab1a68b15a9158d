"""Liveness of the agent registry: a sweep loop in every server replica.

Each sweep is one script (scripts/agent_reap.lua), so however many replicas
sweep at once, an agent turns stale once and leaves once. Then the tasks of
agents that went stale or left are put back in their queues; that step is
idempotent (each release is fenced by the claim's token), so replicas racing
on it, or a replica dying halfway, cost nothing: the agent stays marked until
a sweep finishes its release.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from packetbus._stopping import cancel_and_wait

from ._agent_store import AgentStore
from ._retry import StoreRefusedError, StoreUnavailableError, StoreWrongTypeError

log = logging.getLogger("packetbus.server.agents")

# (queue, worker, reason) -> how many tasks went back.
Release = Callable[[str, str, str], Awaitable[int]]
# Agents handled per sweep; the rest wait for the next one.
_SWEEP_LIMIT = 500


class AgentReaper:
    def __init__(self, store: AgentStore, release: Release, interval: float) -> None:
        self._store = store
        self._release = release
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def sweep_once(self) -> None:
        sweep = await self._store.sweep(_SWEEP_LIMIT)
        for agent_id in sweep.stale:
            log.info("agent %s went stale", agent_id)
        for agent_id in sweep.left:
            log.info("agent %s removed after staying stale", agent_id)
        for agent_id, mark in sweep.releasing:
            liveness, queues = await self._store.claimed_queues(agent_id)
            reason = f"agent {agent_id} went stale" if liveness else f"agent {agent_id} left"
            for queue in queues:
                released = await self._release(queue, agent_id, reason)
                if released:
                    log.info("%s: released %d of its tasks in %s", reason, released, queue)
            await self._store.released(agent_id, mark)

    async def _run(self) -> None:
        # The store's refusal last logged: a store full (or away) for an hour is one
        # warning and one line when it ends, not a warning each sweep (each second).
        refused: str | None = None
        while True:
            try:
                await self.sweep_once()
            except asyncio.CancelledError:
                raise
            except StoreWrongTypeError as exc:  # a key the server did not make
                # Once at ERROR, in one line, until the sweeps go on: not a traceback
                # a second for as long as the key stays (as storage_errors logs a call's).
                kind = f"wrong type {exc.found.key if exc.found else ''}"
                if kind != refused:
                    log.error(
                        "agent sweep skipped until the key is fixed: STORE_KEY_WRONG_TYPE: %s", exc
                    )
                    refused = kind
            except (StoreUnavailableError, StoreRefusedError) as exc:  # away, full: not a bug
                # Keyed by the kind of refusal, not its words: one refusal's message
                # varies with where the retry budget ran out.
                kind = exc.kind if isinstance(exc, StoreRefusedError) else "unavailable"
                if kind != refused:
                    log.warning("agent sweep skipped, and until the store takes it: %s", exc)
                    refused = kind
            except Exception:
                # A bug: the next sweep tries again; liveness only lags.
                log.exception("agent sweep failed")
            else:
                if refused is not None:
                    log.info("agent sweeps go on: the store takes writes again")
                    refused = None
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="packetbus-agent-reaper")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
