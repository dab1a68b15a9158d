"""Which key of a failed command holds another Redis type than its family's, when
the store answers WRONGTYPE (a key the server did not make: someone SET pb:{t}:log,
a restore gone wrong). Redis's reply names no key, so the server's store clients
(KeyTypedErrors: every command, scripts' EVALSHA included) look at the keys the
command named (TYPE) against the layout's table, the one in _keys' docstring:
each family has one type (DESIGN 2.5), and that table is where it is written.

Only the keys a command names are looked at: a key a script derives in Lua (a
task's hash, a ready set) is not among them, nor are a pipeline's (redis-py runs
those past execute_command); such a key is reported as unknown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from redis import exceptions as rx
from redis.asyncio import Redis

from . import _keys
from ._refusals import reply_text
from ._replies import text

# A row of the table: | ``<key pattern>``[,] | <type> | ...
_ROW = re.compile(r"^\| ``([^`]+)``,?\s*\|\s*(\w*)\s*\|", re.MULTILINE)
_PLACEHOLDER = re.compile(r"<[^>]+>")


def _families(doc: str) -> list[tuple[re.Pattern[str], str, int]]:
    """(pattern, type, literal characters) of each key family in `doc`'s table,
    the most specific (most literal characters) first."""
    rows: list[tuple[str, str]] = []
    for template, kind in _ROW.findall(doc):
        if rows and not template.startswith(_keys.PREFIX):
            rows[-1] = (rows[-1][0] + template, rows[-1][1])  # a name wrapped onto a row
        elif kind or rows:
            rows.append((template, kind or rows[-1][1]))  # a second name of one row's type
    families = []
    for template, kind in rows:
        if kind == "none":
            continue
        parts = _PLACEHOLDER.split(template)
        pattern = ".+".join(re.escape(p) for p in parts)
        families.append((re.compile(pattern + r"\Z"), kind, sum(map(len, parts))))
    return sorted(families, key=lambda f: -f[2])


FAMILIES = _families(_keys.__doc__ or "")


def expected_type(key: str) -> str | None:
    """The Redis type of `key`'s family (the most specific that matches), or None
    when it is no key of the layout."""
    for pattern, kind, _ in FAMILIES:
        if pattern.match(key):
            return kind
    return None


def _expected_types(key: str) -> set[str]:
    """Every type a family matching `key` has (a name may fit two patterns)."""
    return {kind for pattern, kind, _ in FAMILIES if pattern.match(key)}


@dataclass(frozen=True, slots=True)
class WrongType:
    """A key holding `found` where its family is `expected`."""

    key: str
    expected: str
    found: str


async def wrong_typed(redis: Any, keys: list[Any]) -> WrongType | None:
    """The first of `keys` that exists with another type than its family's, or None
    (none of them: a key the command derived). One TYPE per key of the layout;
    called only after a WRONGTYPE, never on a call's way."""
    for raw in keys:
        key = text(raw) if isinstance(raw, bytes | str) else str(raw)
        expected = _expected_types(key)
        if not expected:
            continue
        found = text(await redis.type(key))
        if found != "none" and found not in expected:
            return WrongType(key, expected_type(key) or sorted(expected)[0], found)
    return None


class WrongTypeError(rx.ResponseError):
    """A WRONGTYPE reply to a command whose keys were looked at: `found` is the one
    holding another type, None when none of them does (a key it derived)."""

    def __init__(self, message: str, found: WrongType | None) -> None:
        super().__init__(message)
        self.found = found


def is_wrong_type(exc: BaseException) -> bool:
    """Whether `exc` is the store's WRONGTYPE reply (to a command, a script or a
    pipeline)."""
    return isinstance(exc, rx.ResponseError) and reply_text(exc).startswith("WRONGTYPE")


class KeyTypedErrors:
    """Mixed into the server's store clients (a Redis, a Redis Cluster): a WRONGTYPE
    reply is raised as WrongTypeError naming the key, looked up after the fact, so a
    call that succeeds costs nothing more."""

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        try:
            return await super().execute_command(*args, **options)  # type: ignore[misc]
        except rx.ResponseError as exc:
            if isinstance(exc, WrongTypeError) or not is_wrong_type(exc):
                raise
            named = [a for a in args[1:] if _is_layout_key(a)]
            try:
                found = await wrong_typed(self, named)
            except Exception:  # a second failure must not hide the first
                found = None
            raise WrongTypeError(str(exc), found) from exc


def _is_layout_key(arg: object) -> bool:
    prefix = _keys.PREFIX + ":"
    if isinstance(arg, bytes):
        return arg.startswith(prefix.encode())
    return isinstance(arg, str) and arg.startswith(prefix)


class StoreRedis(KeyTypedErrors, Redis):  # type: ignore[misc]  # redis-py's own bases disagree
    """The server's client of a single Redis (see KeyTypedErrors)."""
