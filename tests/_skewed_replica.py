"""A packetbus replica whose own clock is off by SKEW seconds (negative: behind).

    python tests/_skewed_replica.py SKEW PORT REDIS_URL DATA_DIR POLICY_FILE

time.time, time.time_ns and datetime's now/utcnow/today are shifted before the
server is imported, as a machine whose clock drifted would show them (the
monotonic clock, which says nothing about the date, is left alone; so is gRPC's
core, see _RealTime). Prints
"wall clock <unix seconds>" (so a test can check the skew took), then serves as
`packetbus serve` does (its "serving on" line) with 1 s ack deadlines allowed.
"""

from __future__ import annotations

import datetime as _datetime
import sys
import time
from pathlib import Path
from typing import Any, Self


class _RealTime:
    """The time module as gRPC's core sees it (its own clock, which this script does
    not shift): gRPC's Python layer compares the core's deadlines with time.time(),
    and on a real machine whose clock is off both are the same clock."""

    def __init__(self, real_time: Any) -> None:
        self.time = real_time

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def shift_clock(seconds: float) -> None:
    real_time, real_time_ns = time.time, time.time_ns
    from grpc._cython import cygrpc

    cygrpc.time = _RealTime(real_time)
    skew_ns = round(seconds * 1e9)
    time.time = lambda: real_time() + seconds
    time.time_ns = lambda: real_time_ns() + skew_ns
    delta = _datetime.timedelta(seconds=seconds)
    real = _datetime.datetime

    class Shifted(_datetime.datetime):
        @classmethod
        def _moved(cls, when: _datetime.datetime) -> Self:
            moved = when + delta
            return cls.combine(moved.date(), moved.timetz())

        @classmethod
        def now(cls, tz: _datetime.tzinfo | None = None) -> Self:
            return cls._moved(real.now(tz))

        @classmethod
        def utcnow(cls) -> Self:
            return cls._moved(real.utcnow())

        @classmethod
        def today(cls) -> Self:
            return cls._moved(real.today())

    _datetime.datetime = Shifted  # type: ignore[misc]


def main(skew: str, port: str, redis_url: str, data_dir: str, policy: str) -> None:
    shift_clock(float(skew))
    print(f"wall clock {time.time():.3f}", flush=True)

    import asyncio

    from packetbus_server import Limits, ServerConfig
    from packetbus_server._app import serve

    config = ServerConfig(
        listen=f"127.0.0.1:{port}",
        redis_url=redis_url,
        data_dir=Path(data_dir),
        policy_file=Path(policy),
        limits=Limits(min_ack_deadline_seconds=1),
        grace_seconds=0,
        drain_notice_seconds=0,
    )
    asyncio.run(serve(config))


if __name__ == "__main__":
    main(*sys.argv[1:6])
