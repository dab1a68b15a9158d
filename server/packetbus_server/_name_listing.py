"""The request rules of the listings of names the caller sees only in part
(ListTopics, ListTaskQueues): one place, so both read their prefix and page token
alike.

A prefix is taken when some name could start with it, and refused otherwise (a
listing that could only ever be empty is a mistake to say, not to answer):
queue names are topic names (_field_rules.validate_topic), so both listings take
"" (every name) or the start of a topic name: letters, digits and ``_ . : / -``,
not starting with ``.``, ``:``, ``/`` or ``-``, at most the server's max topic
length in bytes, or an inbox topic's (MAX_INBOX_TOPIC_LENGTH, 771) under
``inbox/``, whichever is more.

A page token of these listings is the last name a page returned, sealed for the
prefix asked (_page_tokens). The seal guards against mistakes, not forgery: its
check is no secret, so a client can seal any name. A token is therefore taken
only when its name is one this listing could have returned to this caller: under
the request's prefix and one the caller may read. Else it is INVALID_ARGUMENT on
page_token: a listing never starts from, or echoes back, a name outside what the
caller may list.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ._fields import inbox_topic_prefixed, longest_name, utf8_length
from ._page_tokens import unseal
from ._validation import Violation

# The start of a topic name (_field_rules._TOPIC), empty included.
_PREFIX = re.compile(r"(?:[A-Za-z0-9_][A-Za-z0-9_.:/-]*)?\Z")


def check_prefix(violations: list[Violation], prefix: str, max_topic_length: int) -> None:
    """Add a `prefix` violation when no topic or queue name can start with `prefix`
    (module docstring): LENGTH beyond the longest such name, else TOPIC_FORMAT."""
    inbox = longest_name(max_topic_length)
    longest = inbox if inbox_topic_prefixed(prefix) else max_topic_length
    if utf8_length(prefix) > longest:
        violations.append(
            Violation(
                "prefix",
                "LENGTH",
                f"must be at most {longest} bytes, the longest name it can start "
                f"({inbox} under inbox/)",
            )
        )
    elif not _PREFIX.match(prefix):
        violations.append(
            Violation(
                "prefix",
                "TOPIC_FORMAT",
                "must be the start of a name: letters, digits and _ . : / -, the first a "
                "letter, digit or _",
            )
        )


def page_after(
    violations: list[Violation],
    listing: str,
    prefix: str,
    token: str,
    may_read: Callable[[str], bool],
) -> str:
    """The name `token` continues after ("" for the first page); a token of another
    listing or prefix, or whose name is outside `prefix` or not one `may_read`,
    adds a page_token violation and gives ""."""
    problems: list[Violation] = []
    after = unseal(problems, listing, (prefix,), token)
    if not problems and after and (not after.startswith(prefix) or not may_read(after)):
        problems.append(
            Violation(
                "page_token",
                "PAGE_TOKEN",
                "does not continue a listing this caller may see under this prefix: pass "
                "a next_page_token back unchanged, with the same prefix",
            )
        )
    violations.extend(problems)
    return "" if problems else after
