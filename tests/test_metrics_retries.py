"""packetbus_store_retries_total counts each retry the store's retry loop makes, by
the error's class."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from redis import exceptions as rx

from packetbus_server._observability.counting import error_class
from packetbus_server._retry import StoreFailedError, with_retries


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


def _retries(error_class: str) -> float:
    value = REGISTRY.get_sample_value("packetbus_store_retries_total", {"error_class": error_class})
    return value or 0.0


async def test_each_retry_is_counted_once_by_class_and_a_bug_is_not() -> None:
    failures = [rx.ConnectionError("reset"), rx.TryAgainError("slot moving"), None]
    before = {c: _retries(c) for c in ("connection", "tryagain")}

    async def operation() -> str:
        failure = failures.pop(0)
        if failure is not None:
            raise failure
        return "done"

    assert await with_retries(operation, budget_seconds=5) == "done"
    assert {c: _retries(c) - before[c] for c in before} == {"connection": 1, "tryagain": 1}

    before_other = _retries("err")

    async def bug() -> None:
        raise rx.ResponseError("ERR wrong number of arguments for 'get' command")

    with pytest.raises(StoreFailedError):
        await with_retries(bug, budget_seconds=5)
    assert _retries("err") == before_other
