"""The store's refusals: error replies that mean Redis did not run a command because
of its own state (full memory, a disk it cannot write, a replica's role, ...).

None of these is the caller's mistake or a bug, so none is INTERNAL. Each kind says
whether the state may pass within one call's deadline (then the command is retried,
and UNAVAILABLE answers when it did not pass) and what the call answers otherwise.

Nothing is half-written when Redis refuses: it checks these states before a command
runs, and for a script before its first write. A script that declares flags (a
``#!lua`` line) is refused before it starts; one without is refused at its first
write, and once it has written, Redis lets it finish rather than stop it midway
(Redis 7 ``scriptVerifyOOM``/``scriptVerifyWriteCommandAllow``). So a refused write
left nothing behind, and retrying it is as safe as any idempotent write.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from redis import exceptions as rx

# redis-py takes the error code off the message for the replies it has a class for.
_CODE_OF_CLASS: tuple[tuple[type[BaseException], str], ...] = (
    (rx.OutOfMemoryError, "OOM"),
    (rx.ReadOnlyError, "READONLY"),
    (rx.BusyLoadingError, "LOADING"),
    (rx.MasterDownError, "MASTERDOWN"),
)

# A pipeline's error names the command first ("Command # 1 (SET ...) of pipeline
# caused error: OOM ..."); the reply's own text follows this.
_PIPELINE_MARK = "caused error: "
# An error raised inside a script ends with where it was raised.
_SCRIPT_MARK = " script: "


@dataclass(frozen=True, slots=True)
class Refusal:
    """One kind of store refusal and what to do about it."""

    # The error code Redis answered with: "OOM", "MISCONF", "READONLY", ...
    kind: str
    # The state may pass within a call's deadline: retry, then UNAVAILABLE.
    retry: bool
    # What the RPC answers when it does not pass (or is not retried).
    code: grpc.StatusCode
    # For a person: what the store refused, why, and what to do (a retried kind's
    # says what happened; the caller adds whether to retry).
    message: str


_NOTHING_WRITTEN = (
    "it refused before writing anything of it, so sending the same request again is safe"
)

_KINDS: dict[str, tuple[bool, grpc.StatusCode, str]] = {
    "OOM": (
        False,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "the store is full: its memory is at maxmemory and it evicts nothing "
        "(maxmemory-policy noeviction), so it refuses writes until packets expire or "
        f"its maxmemory is raised; {_NOTHING_WRITTEN}",
    ),
    "MISCONF": (
        False,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "the store refuses writes because it cannot save them to disk ({detail}); "
        f"free space on its disk (see its log); {_NOTHING_WRITTEN}",
    ),
    "READONLY": (
        True,
        grpc.StatusCode.UNAVAILABLE,
        "the store is a read-only replica (READONLY), not a primary: nothing was written",
    ),
    "NOREPLICAS": (
        True,
        grpc.StatusCode.UNAVAILABLE,
        "the store has fewer replicas in sync than its min-replicas-to-write "
        "(NOREPLICAS): nothing was written",
    ),
    "BUSY": (
        True,
        grpc.StatusCode.UNAVAILABLE,
        "the store is busy running a long script or function (BUSY): nothing was written",
    ),
    "LOADING": (
        True,
        grpc.StatusCode.UNAVAILABLE,
        "the store is loading its data set into memory (LOADING)",
    ),
    "MASTERDOWN": (
        True,
        grpc.StatusCode.UNAVAILABLE,
        "the store is a replica that lost its link to its primary (MASTERDOWN)",
    ),
    "UNBLOCKED": (
        True,
        grpc.StatusCode.UNAVAILABLE,
        "the store changed role while a read waited (UNBLOCKED)",
    ),
}


# The ErrorInfo reason (domain "packetbus") of a refusal that is not retried, so a
# client can tell a full store from another RESOURCE_EXHAUSTED (a stream cap).
ERROR_REASONS = {"OOM": "STORE_FULL", "MISCONF": "STORE_CANNOT_PERSIST"}


def reply_text(exc: BaseException) -> str:
    """The store's reply in `exc`: unwrapped from a pipeline's rewording, without the
    script location Redis appends to an error raised inside a script."""
    text = str(exc.args[0]) if exc.args else ""
    if _PIPELINE_MARK in text:
        # redis.asyncio quotes the reply's args there: "caused error: ('MISCONF ...',)".
        text = text.split(_PIPELINE_MARK, 1)[1].lstrip("('\"")
    return text.split(_SCRIPT_MARK, 1)[0].strip()


def refusal(exc: BaseException) -> Refusal | None:
    """The store refusal `exc` reports, or None when it is not one (a bug, a
    configuration error, a lost connection: see _retry's table)."""
    if not isinstance(exc, rx.RedisError):
        return None
    text = reply_text(exc)
    kind = next((code for cls, code in _CODE_OF_CLASS if isinstance(exc, cls)), None)
    if kind is None:
        if not isinstance(exc, rx.ResponseError):
            return None
        kind = text.split(" ", 1)[0]
        text = text[len(kind) :].strip()
    elif text.startswith(kind + " "):  # constructed with its code left on
        text = text[len(kind) :].strip()
    known = _KINDS.get(kind)
    if known is None:
        return None
    retry, code, message = known
    if kind == "MISCONF":
        # Redis's own words say which write failed: "Errors writing to the AOF
        # file: No space left on device", or that the last RDB save failed.
        detail = text.split(". ", 1)[0].rstrip(".") or "its last save failed"
        message = message.format(detail=f"MISCONF {detail}")
    return Refusal(kind, retry, code, message)
