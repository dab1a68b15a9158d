"""The console's end-to-end tests' parts: the browser driver (console/web/e2e, Node and
Debian's Chromium through playwright-core) and the scripted swarm of agents.

`Driver` runs ``node console/web/e2e/driver.mjs`` and asks it for one step at a time
(its protocol: the driver's header comment). `Swarm` is a coordinator and two workers,
each a Python client under its own JWT, heartbeating in the background; the tests ask it
to dispatch, hold, consume and carcel packets as agents of a real swarm would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import packetbus
from tests._identities import Issuer, client_as, spiffe
from tests.conftest import REPO, unique

WEB = REPO / "console" / "web"
CHROMIUM = Path(os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium"))
INSTALL = "apt-get update && apt-get install -y --no-install-recommends chromium"
STEP_TIMEOUT = 90.0  # seconds for one browser step, its own waits included
HEALTHY_TTL = 2  # seconds: the workers' heartbeat TTL (they heartbeat every third of it)


def artifacts() -> Path:
    """Where the screenshots go: $PACKETBUS_ARTIFACTS/console-screenshots, else
    <repo>/artifacts/console-screenshots (gitignored)."""
    root = os.environ.get("PACKETBUS_ARTIFACTS") or str(REPO / "artifacts")
    return Path(root) / "console-screenshots"


def require_browser() -> None:
    """Skip when Debian's Chromium is absent on a developer's machine; fail in CI
    ($CI set), where .ci/run installs it. Fail when Node or playwright-core is missing
    (`npm ci` in console/web installs it, as .ci/run does)."""
    if not os.access(CHROMIUM, os.X_OK):
        reason = f"Chromium is not installed at {CHROMIUM}; install Debian's as root: {INSTALL}"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"{reason} (.ci/run does so in CI)", pytrace=False)
        pytest.skip(reason)
    assert shutil.which("node"), "node (20+) is required for the console's browser tests"
    assert (WEB / "node_modules" / "playwright-core").is_dir(), "run `npm ci` in console/web"


class Driver:
    """The browser driver process: `step` asks it for one step (scenarios.mjs)."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self._process = process
        self._log = log
        self._next = 0

    @classmethod
    async def start(cls, console_url: str, screenshots: Path, log: Path) -> Driver:
        """The driver for the console at `console_url`, once Chromium runs; its stderr
        goes to `log`. Raises AssertionError with that log if it fails to start."""
        env = {**os.environ, "E2E_CONSOLE_URL": console_url, "E2E_SCREENSHOTS": str(screenshots)}
        env["E2E_CHROMIUM"] = str(CHROMIUM)
        with log.open("wb") as errors:
            process = await asyncio.create_subprocess_exec(
                "node",
                "e2e/driver.mjs",
                cwd=WEB,
                env=env,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=errors,
            )
        driver = cls(process, log)
        hello = await driver._answer(0, "start", 60)
        assert str(hello["chromium"]).startswith(("1", "2")), hello
        return driver

    async def step(self, name: str, **args: Any) -> Any:
        """Run step `name` with `args` in the browser: its answer. Raises
        AssertionError with the driver's error and failure screenshot."""
        self._next += 1
        assert self._process.stdin is not None
        line = json.dumps({"id": self._next, "step": name, "args": args}) + "\n"
        self._process.stdin.write(line.encode())
        await self._process.stdin.drain()
        return await self._answer(self._next, name, STEP_TIMEOUT)

    async def _answer(self, request: int, name: str, timeout: float) -> Any:
        assert self._process.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                line = await self._process.stdout.readline()
        except TimeoutError:
            raise AssertionError(
                f"browser step {name} took over {timeout} s{self._tail()}"
            ) from None
        if not line:
            code = await self._process.wait()
            raise AssertionError(f"the browser driver exited ({code}) during {name}{self._tail()}")
        answer = json.loads(line)
        assert answer["id"] == request, answer
        if not answer["ok"]:
            raise AssertionError(
                f"browser step {name} failed: {answer['error']}\n"
                f"screenshot: {answer['screenshot']}{self._tail()}"
            )
        return answer["result"]

    def _tail(self) -> str:
        text = self._log.read_text(errors="replace")[-3000:] if self._log.exists() else ""
        return f"\ndriver stderr:\n{text}" if text.strip() else ""

    async def close(self) -> None:
        """End the driver (stdin closed: it closes the browser), killing it if it hangs."""
        assert self._process.stdin is not None
        self._process.stdin.close()
        try:
            async with asyncio.timeout(20):
                await self._process.wait()
        except TimeoutError:
            self._process.kill()
            await self._process.wait()


async def eventually(check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    """Poll async `check` until it returns a truthy value (returned); AssertionError
    naming `what` after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while True:
            found = await check()
            if found:
                return found
            await asyncio.sleep(0.2)
    raise AssertionError(what)  # unreachable: the timeout raises first


class Swarm:
    """A coordinator and two workers (`coordinator`, `workers`: agent ids), each its own
    principal (`spiffe(agent id)`) with its own client, registered and heartbeating."""

    def __init__(self, tag: str, target: str, issuer: Issuer) -> None:
        self._target = target
        self._issuer = issuer
        self.coordinator = f"swarm-coordinator.{tag}"
        self.workers = [f"swarm-worker-1.{tag}", f"swarm-worker-2.{tag}"]
        self.clients: dict[str, packetbus.Client] = {}

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, target: str, issuer: Issuer) -> AsyncIterator[Swarm]:
        swarm = cls(unique("s").removeprefix("s."), target, issuer)
        async with contextlib.AsyncExitStack() as stack:
            for agent in (swarm.coordinator, *swarm.workers):
                client = await client_as(target, issuer.token(spiffe(agent)))
                swarm.clients[agent] = await stack.enter_async_context(client)
            coordinator = swarm.clients[swarm.coordinator]
            await stack.enter_async_context(
                coordinator.agent(swarm.coordinator, role="coordinator", capabilities=["plan"])
            )
            for worker in swarm.workers:
                await stack.enter_async_context(
                    swarm.clients[worker].agent(
                        worker,
                        role="worker",
                        capabilities=["python", "search"],
                        parent_id=swarm.coordinator,
                        state="idle",
                        ttl=HEALTHY_TTL,
                    )
                )
            yield swarm

    def packet(self, topic: str, data: dict[str, Any]) -> packetbus.Packet:
        """A packet from the coordinator to `topic` carrying `data`."""
        packet = packetbus.Packet(
            topic=topic,
            origin=self.coordinator,
            speech_act=packetbus.SpeechAct.Value("SPEECH_ACT_REQUEST"),
        )
        packet.data.update(data)
        return packetbus.fill_defaults(packet)

    async def hold_spawn(self, topic: str) -> packetbus.Packet:
        """The coordinator asks to spawn a worker on `topic` (group "workers" made first):
        the policy holds it for an approver. Returns the held packet."""
        coordinator = self.clients[self.coordinator]
        await coordinator.create_consumer_group(topic, "workers", start=packetbus.EARLIEST)
        packet = self.packet(topic, {"primitive": "logistics.spawn", "role": "researcher"})
        [result] = await coordinator.dispatch_batch([packet])
        assert result.WhichOneof("outcome") == "held", result
        return packet

    async def receive(self, topic: str, group: str) -> packetbus.StoredPacket:
        """The next packet worker 1 consumes in `group` of `topic`, acked."""
        worker = self.workers[0]
        async with self.clients[worker].consume(topic, group, consumer=worker) as consumer:
            async with asyncio.timeout(20):
                delivery = await anext(aiter(consumer))
            await delivery.ack()
        return delivery.packet

    async def carcel_job(self, topic: str) -> tuple[packetbus.Packet, str]:
        """A job worker 2 cannot parse: nacked in group "jobs" (one attempt), so carceled.
        Returns the packet and its carcel entry id."""
        coordinator = self.clients[self.coordinator]
        await coordinator.create_consumer_group(
            topic, "jobs", start=packetbus.EARLIEST, max_delivery_attempts=1
        )
        packet = self.packet(topic, {"job": "summarize", "input": "\x00garbled"})
        await coordinator.dispatch(packet)
        worker = self.workers[1]
        async with self.clients[worker].consume(topic, "jobs", consumer=worker) as consumer:
            async with asyncio.timeout(20):
                delivery = await anext(aiter(consumer))
            [nacked] = await delivery.nack(reason="cannot parse it")
        assert nacked.carcel_id, nacked
        return packet, nacked.carcel_id

    @contextlib.asynccontextmanager
    async def fading_agent(self, agent: str) -> AsyncIterator[Callable[[], None]]:
        """A helper the coordinator spawned (its own principal), heartbeating every 0.5 s
        (TTL 2 s) until the yielded function stops it: it dies without leaving, so it
        goes stale."""
        async with await client_as(self._target, self._issuer.token(spiffe(agent))) as client:
            await client.register_agent(agent, role="helper", parent_id=self.coordinator, ttl=2)

            async def beat() -> None:
                while True:
                    await asyncio.sleep(0.5)
                    await client.heartbeat_agent(agent, timeout=5)

            task = asyncio.create_task(beat())

            def die() -> None:
                task.cancel()

            try:
                yield die
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
