"""packetbus_store_retries_total counts each retry the store's retry loop makes, by
the error's class."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from redis import exceptions as rx

from packetbus_server._observability.counting import error_class


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (rx.ConnectionError("reset by peer"), "connection"),
        (rx.TimeoutError("read timed out"), "timeout"),
        (rx.BusyLoadingError("Redis is loading the dataset in memory"), "loading"),
        (rx.MovedError("3999 127.0.0.1:6381"), "moved"),
        (rx.AskError("3999 127.0.0.1:6381"), "ask"),
        (rx.TryAgainError("Multiple keys request during rehashing of slot"), "tryagain"),
        (rx.ClusterDownError("The cluster is down"), "clusterdown"),
        (rx.ReadOnlyError("You can't write against a read only replica."), "readonly"),
        (rx.ResponseError("BUSY Redis is busy running a script."), "busy"),
        (rx.ResponseError("NOREPLICAS Not enough good replicas to write."), "noreplicas"),
        (rx.ResponseError("Command # 1 (EVALSHA) of pipeline caused error: 1 2"), "other"),
        (ValueError("not the store's"), "other"),
    ],
)
def test_each_store_error_has_its_class(error: BaseException, expected: str) -> None:
    assert error_class(error) == expected


# Run in a fresh interpreter: in the test process, other tests' servers share the
# counters (and their background tasks run during this one's backoff waits), so a
# retry of theirs could be counted here.
_COUNT_RETRIES = """
import asyncio, json
from prometheus_client import REGISTRY
from redis import exceptions as rx
from packetbus_server._retry import StoreFailedError, with_retries

def retries(error_class):
    value = REGISTRY.get_sample_value("packetbus_store_retries_total", {"error_class": error_class})
    return value or 0.0

async def main():
    failures = [rx.ConnectionError("reset"), rx.TryAgainError("slot moving"), None]

    async def operation():
        failure = failures.pop(0)
        if failure is not None:
            raise failure
        return "done"

    answer = await with_retries(operation, budget_seconds=5)
    counted = {c: retries(c) for c in ("connection", "tryagain", "err", "other")}

    async def bug():
        raise rx.ResponseError("ERR wrong number of arguments for 'get' command")

    try:
        await with_retries(bug, budget_seconds=5)
        raised = None
    except StoreFailedError as exc:
        raised = type(exc).__name__
    after_bug = {c: retries(c) for c in ("err", "other")}
    print(json.dumps({"answer": answer, "counted": counted, "raised": raised, "after_bug": after_bug}))

asyncio.run(main())
"""


def test_each_retry_is_counted_once_by_class_and_a_bug_is_not() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _COUNT_RETRIES], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["answer"] == "done"
    # One retry of each class the operation failed with, nothing else.
    assert seen["counted"] == {"connection": 1.0, "tryagain": 1.0, "err": 0.0, "other": 0.0}
    # A bug (an error no retry can fix) fails at once and is not counted as a retry.
    assert seen["raised"] == "StoreFailedError"
    assert seen["after_bug"] == {"err": 0.0, "other": 0.0}
