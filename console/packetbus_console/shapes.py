"""Protobuf messages as the API's JSON, and reading a request's parameters."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterable
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message
from starlette.requests import Request

from .errors import ApiError

T = TypeVar("T")

MAX_LIMIT = 1000  # items one list answer holds at most
# The largest request body, in bytes: a sign-in token (sessions.MAX_TOKEN_CHARS)
# or a note or reason, with room to spare; bounded so no request fills memory.
MAX_BODY = 64 * 1024


def as_json(message: Message) -> dict[str, Any]:
    """`message` in protobuf's JSON mapping (camelCase keys, enums by name, bytes
    base64, timestamps RFC 3339), fields at their defaults included, so the front
    end finds every key."""
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


async def first(items: AsyncIterable[T], most: int) -> tuple[list[T], bool]:
    """The first `most` of `items` and whether more were left (one more is read to
    tell, no further)."""
    found: list[T] = []
    async for item in items:
        if len(found) == most:
            return found, True
        found.append(item)
    return found, False


def number(
    request: Request, name: str, *, low: float, high: float, default: float, unit: str = ""
) -> float:
    """Query parameter `name` as a number `low`-`high` (`default` when absent or empty).
    Raises ApiError 400 otherwise (NaN, infinities, text)."""
    raw = request.query_params.get(name, "")
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not low <= value <= high:  # also NaN
        raise ApiError(
            400, "INVALID_ARGUMENT", f"{name} must be {low:g}-{high:g}{unit}, not {raw!r}"
        )
    return value


def limit(request: Request) -> int:
    """The ``limit`` query parameter: 1-`MAX_LIMIT` (default `MAX_LIMIT`).
    Raises ApiError 400 otherwise."""
    return count(request, "limit", most=MAX_LIMIT, default=MAX_LIMIT)


def count(request: Request, name: str, *, most: int, default: int) -> int:
    """Query parameter `name` as a whole number 1-`most` (`default` when absent): ASCII
    digits only (``str.isdigit`` also takes "²" and other scripts' digits, which int()
    refuses). Raises ApiError 400 otherwise."""
    raw = request.query_params.get(name, str(default))
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= most:
        raise ApiError(400, "INVALID_ARGUMENT", f"{name} must be 1-{most}, not {raw!r}")
    return int(raw)


async def body(request: Request) -> dict[str, Any]:
    """The request's JSON object body ({} when empty). Raises ApiError 400 when it
    is not a JSON object (or not UTF-8, or nested too deeply for the parser), 413 when it is over `MAX_BODY` bytes (read no further)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise ApiError(413, "RESOURCE_EXHAUSTED", f"the body is over {MAX_BODY} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    try:
        doc = json.loads(raw)
    except ValueError as exc:  # also bytes that are not UTF-8 (UnicodeDecodeError)
        raise ApiError(400, "INVALID_ARGUMENT", f"the body is not JSON: {exc}") from exc
    except RecursionError as exc:  # arrays or objects nested thousands deep
        raise ApiError(400, "INVALID_ARGUMENT", "the body is nested too deeply") from exc
    if not isinstance(doc, dict):
        raise ApiError(400, "INVALID_ARGUMENT", "the body must be a JSON object")
    return doc


def is_utf8(value: str) -> bool:
    """Whether `value` can be encoded as UTF-8 (it holds no lone surrogate)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def text(doc: dict[str, Any], request: Request, key: str, *, required: bool = False) -> str:
    """String parameter `key`: from the JSON body `doc`, else the query string;
    "" when absent. Raises ApiError 400 when it is not a string (or not one
    UTF-8 can carry: JSON's ``\\ud800`` escapes decode to lone surrogates, which
    a packetbus call could not encode), or absent and `required`."""
    value = doc.get(key, request.query_params.get(key, ""))
    if not isinstance(value, str):
        raise ApiError(400, "INVALID_ARGUMENT", f"{key} must be a string")
    if not is_utf8(value):
        raise ApiError(400, "INVALID_ARGUMENT", f"{key} is not valid Unicode (a lone surrogate)")
    if required and not value:
        raise ApiError(400, "INVALID_ARGUMENT", f"{key} is required")
    return value
