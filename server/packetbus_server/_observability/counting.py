"""Counting packetbus's own work where it happens: the small helpers the services call
with a batch's totals (one `inc(n)` per batch and label, never one per packet).

Label values come from closed sets: an ErrorInfo reason packetbus defines (or a
status code's name), a policy rule's id (the operator's file), a store error's
class, a script's name. None is a tracking id, a topic or a client's text. A
consumer group's name is a client's choice, so it is bounded here (`GroupLabels`):
a label child lives as long as the process, however briefly its group did.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from google.rpc import code_pb2, status_pb2
from redis import exceptions as rx

from packetbus.rich_status import error_info

from .._refusals import reply_text
from . import metrics

PACKET = "packet"
TASK = "task"
FINDING = "finding"
RECORD = "record"

# A closed set: every google.rpc code's name (INVALID_ARGUMENT, ...).
_CODE_NAMES = {value: name for name, value in code_pb2.Code.items()}


def reason_of(status: status_pb2.Status) -> str:
    """The reason label of a refusal: its ErrorInfo's reason (POLICY_REJECTED,
    PERMISSION_DENIED's reasons, ...), else its code's name (INVALID_ARGUMENT for a
    packet that failed validation, ALREADY_EXISTS for a tracking id taken)."""
    info = error_info(status)
    if info is not None and info.reason:
        return str(info.reason)
    return str(_CODE_NAMES.get(status.code, "UNKNOWN"))


def rule_of(status: status_pb2.Status) -> str:
    """The policy rule (ErrorInfo metadata rule_id) that refused, "" when none did."""
    info = error_info(status)
    return str(info.metadata.get("rule_id", "")) if info is not None else ""


def rejected(statuses: Iterable[status_pb2.Status]) -> None:
    """Count refused packets, one per status, by reason and rule."""
    totals: dict[tuple[str, str], int] = {}
    for status in statuses:
        key = (reason_of(status), rule_of(status))
        totals[key] = totals.get(key, 0) + 1
    for (reason, rule), n in totals.items():
        metrics.packets_rejected.labels(reason, rule).inc(n)


def rejected_as(reason: str, n: int = 1, rule: str = "") -> None:
    """Count `n` packets refused for `reason` (an ErrorInfo reason or a code's name)."""
    if n:
        metrics.packets_rejected.labels(reason, rule).inc(n)


# (metric, label value) -> its child, for the counters every Dispatch moves:
# `labels()` takes a lock and builds a key each time, which showed in the cost
# of a single-packet call (issue 16). Bounded: the values are closed sets
# (a kind of work, a custody action).
_children: dict[tuple[Any, str], Any] = {}


def _child(metric: Any, value: str) -> Any:
    key = (metric, value)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(value)
    return found


def stored(kind: str, n: int, size: int) -> None:
    """Count `n` packets of `kind` newly stored, `size` bytes in all."""
    if n:
        _child(metrics.packets_dispatched, kind).inc(n)
        metrics.stored_bytes.inc(size)


def deduplicated(n: int = 1) -> None:
    if n:
        metrics.packets_deduplicated.inc(n)


def posted(kind: str, status: str, size: int) -> None:
    """Count one packet posted outside Dispatch by the store's answer: "new" (stored,
    `size` bytes), "dup" (a resend answered with the original) or "conflict"."""
    if status == "new":
        stored(kind, 1, size)
    elif status == "dup":
        deduplicated()
    else:
        rejected_as("ALREADY_EXISTS")


# A group name can neither start with nor contain "(" (_validation's group name
# rule), so this label value is never a real group's.
OTHER_GROUPS = "(other)"
# As many as one scrape reads from the store (store_metrics.Bounds.groups).
MAX_GROUP_LABELS = 1000


class GroupLabels:
    """The group label values this process gives out: the first `most` distinct
    group names keep their own value; any later one is counted under OTHER_GROUPS.
    Why: group names are chosen by clients and groups can be created and deleted
    without end, while a Prometheus label child is never freed (bounded labels:
    Prometheus's instrumentation practices, "do not overuse labels")."""

    def __init__(self, most: int = MAX_GROUP_LABELS) -> None:
        self._most = most
        self._seen: set[str] = set()

    def __call__(self, group: str) -> str:
        if group in self._seen:
            return group
        if len(self._seen) < self._most:
            self._seen.add(group)
            return group
        return OTHER_GROUPS


group_label = GroupLabels()


def redelivered(group: str, n: int) -> None:
    """Count `n` deliveries of `group`'s packets after their first."""
    if n:
        metrics.group_redeliveries.labels(group_label(group)).inc(n)


def carceled(group: str, n: int) -> None:
    """Count `n` of `group`'s packets moved to the carcel."""
    if n:
        metrics.group_carceled.labels(group_label(group)).inc(n)


def signed(action: str, n: int) -> None:
    """Count `n` custody entries signed for `action` (received, delivered, ...)."""
    if n:
        _child(metrics.custody_entries_signed, action).inc(n)


# redis-py's classes for the replies it recognises (most before their bases:
# MovedError is an AskError, BusyLoadingError a ConnectionError).
_CLASSES: tuple[tuple[type[BaseException], str], ...] = (
    (rx.BusyLoadingError, "loading"),
    (rx.MovedError, "moved"),
    (rx.AskError, "ask"),
    (rx.TryAgainError, "tryagain"),
    (rx.MasterDownError, "masterdown"),
    (rx.ClusterDownError, "clusterdown"),
    (rx.ReadOnlyError, "readonly"),
    (rx.NoScriptError, "noscript"),
    (rx.OutOfMemoryError, "oom"),
)


def error_class(exc: BaseException) -> str:
    """A store error's class for packetbus_store_retries_total: the Redis error code,
    lower case (moved, ask, tryagain, clusterdown, masterdown, loading, busy,
    readonly, noscript, oom, ...), or connection / timeout for a lost or slow
    connection, cluster for the cluster client's own errors (slot map reloads),
    other for anything else. A closed set: Redis's error codes (_retry's table)."""
    for cls, name in _CLASSES:
        if isinstance(exc, cls):
            return name
    if isinstance(exc, rx.TimeoutError | asyncio.TimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, rx.ConnectionError | OSError):
        return "connection"
    if isinstance(exc, rx.ResponseError):
        code = str(getattr(exc, "status_code", None) or reply_text(exc).split(" ", 1)[0])
        code = code.lower()
        return code if code.isalpha() and len(code) <= 16 else "other"
    if isinstance(exc, rx.ClusterError | rx.RedisClusterException):
        return "cluster"
    return "other"
