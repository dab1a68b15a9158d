"""A TCP proxy that breaks connections on purpose, to put faults between server and Redis."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class ProxyStats:
    connections: int = 0
    cuts: int = 0
    dropped_replies: int = 0
    blackouts: int = 0
    refused: int = 0


@dataclass
class FaultyProxy:
    """Forwards 127.0.0.1:<port> to `upstream_port`.

    `drop_reply_rate`: share of upstream replies thrown away, closing the
    connection: the command ran but its reply is lost, the case that makes a
    non-idempotent retry store twice. `cut_every`: seconds between cutting
    every open connection at once (None: never). `blackout_every` and
    `blackout_for`: every so often, refuse every connection for a while, as a
    restarting Redis would. `freeze()`: stop forwarding either way but keep every
    socket open, as a peer that vanished without FIN or RST (a pulled cable, a
    crashed host, a dropped NAT entry) looks; `thaw()` undoes it.
    `drop_reply_when`: a reply chunk for which it answers True is thrown away
    too (to lose the reply of one chosen command).
    """

    upstream_port: int
    drop_reply_rate: float = 0.0
    cut_every: float | None = None
    blackout_every: float | None = None
    blackout_for: float = 0.0
    seed: int = 7
    drop_reply_when: Callable[[bytes], bool] | None = None
    stats: ProxyStats = field(default_factory=ProxyStats)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._dark = False
        self._faulting = False
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.port = 0

    def black_out(self) -> None:
        """Cut every connection and refuse new ones until `light_up()` (a store down)."""
        self._dark = True
        self.cut_all()

    def light_up(self) -> None:
        self._dark = False

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    async def start(self, *, faults: bool = True) -> None:
        """Listen on `self.port`; with `faults=False`, forward faithfully until
        `begin_faults()` (so a server can start before the faults do)."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        if faults:
            self.begin_faults()

    def begin_faults(self) -> None:
        """Start dropping replies, cutting and blacking out, as configured."""
        self._faulting = True
        if self.cut_every is not None:
            self._tasks.append(asyncio.create_task(self._cut_periodically(self.cut_every)))
        if self.blackout_every is not None:
            self._tasks.append(asyncio.create_task(self._black_out(self.blackout_every)))

    async def end_faults(self) -> None:
        """Forward faithfully again from now on (connections cut meanwhile stay cut)."""
        self._faulting = False
        self._dark = False
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            self._server.close()
        self.cut_all()
        self._flowing.set()  # frozen pumps see their sockets closed and end
        if self._server is not None:
            await self._server.wait_closed()

    def cut_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _cut_periodically(self, every: float) -> None:
        while True:
            await asyncio.sleep(every * self._rng.uniform(0.5, 1.5))
            if self._writers:
                self.stats.cuts += 1
                self.cut_all()

    async def _black_out(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            self.stats.blackouts += 1
            self._dark = True
            self.cut_all()
            await asyncio.sleep(self.blackout_for)
            self._dark = False

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._dark:
            self.stats.refused += 1
            writer.transport.abort()
            return
        self.stats.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, replies: bool) -> None:
            try:
                while chunk := await src.read(65536):
                    await self._flowing.wait()
                    if replies and (
                        (self._faulting and self._rng.random() < self.drop_reply_rate)
                        or (self.drop_reply_when is not None and self.drop_reply_when(chunk))
                    ):
                        self.stats.dropped_replies += 1
                        writer.transport.abort()
                        up_writer.transport.abort()
                        return
                    dst.write(chunk)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer, False), pump(up_reader, writer, True))
        self._writers.discard(writer)
        self._writers.discard(up_writer)
