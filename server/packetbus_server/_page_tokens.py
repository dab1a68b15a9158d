"""Page tokens that say which listing, and which scope of it, made them.

Each listing keeps its own position inside a token (an offset, "<topic> <entry id>",
a key, ...); those look alike across listings, so a token fed to another listing, or
to the same listing for another topic, queue, task or agent, would silently give a
wrong page. A token is therefore sealed as

    "v1.<listing>.<position, base64url without padding>.<check>"

where <check> is 24 hex digits of BLAKE2b over (listing, scope, position): a token is
accepted only by the listing and scope that made it, and a token edited anywhere is
refused. The check is not a secret (it guards against mistakes, not forgery: a
forged token only reaches entries the caller could list anyway). Tokens are ASCII,
at most MAX_TOKEN_LENGTH characters; clients treat them as opaque.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re

from ._validation import Violation

_VERSION = "v1"
_CHECK_BYTES = 12
# Positions are short: the longest is a context document name (512 bytes) or a
# topic (max_topic_length, 200 bytes by default) with an entry id; 8 KiB leaves room
# for a larger configured topic limit and still bounds what is decoded.
MAX_TOKEN_LENGTH = 8192
_TOKEN = re.compile(r"v1\.([a-z_]{1,32})\.([A-Za-z0-9_-]*)\.([0-9a-f]{24})\Z")

Scope = tuple[str | int | float, ...]


def _check(listing: str, scope: Scope, position: str) -> str:
    # JSON keeps the parts apart whatever characters they hold.
    material = json.dumps([_VERSION, listing, list(scope), position], ensure_ascii=True)
    return hashlib.blake2b(material.encode(), digest_size=_CHECK_BYTES).hexdigest()


def seal(listing: str, scope: Scope, position: str) -> str:
    """The page token for `position` of `listing` within `scope` ("" stays "": no
    next page)."""
    if not position:
        return ""
    body = base64.urlsafe_b64encode(position.encode()).rstrip(b"=").decode()
    return f"{_VERSION}.{listing}.{body}.{_check(listing, scope, position)}"


def unseal(violations: list[Violation], listing: str, scope: Scope, token: str) -> str:
    """The position kept in `token`, made by `seal(listing, scope, ...)`; "" for an
    empty token (the first page). Any other token adds a `page_token` violation
    (rule PAGE_TOKEN) and gives ""."""
    if not token:
        return ""
    opened = _open(token)
    if opened is None or _check(listing, scope, opened[0]) != opened[1]:
        violations.append(
            Violation(
                "page_token",
                "PAGE_TOKEN",
                "is not a token this listing gave for these arguments: pass a "
                "next_page_token back unchanged, to the same listing with the same filters",
            )
        )
        return ""
    return opened[0]


def _open(token: str) -> tuple[str, str] | None:
    """(position, check) of a well-formed token."""
    if len(token) > MAX_TOKEN_LENGTH or not token.isascii():
        return None
    match = _TOKEN.match(token)
    if match is None:
        return None
    body = match[2]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        position = raw.decode()
    except (binascii.Error, ValueError):
        return None
    # One spelling per position: trailing bits that decode alike are refused.
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != body or not position:
        return None
    return position, match[3]
