"""The request rules of the listings of names the caller sees only in part
(ListTopics, ListTaskQueues): one place, so both read their page token alike.

A page token of these listings is the last name a page returned, sealed for the
prefix asked (_page_tokens). The seal guards against mistakes, not forgery: its
check is no secret, so a client can seal any name. A token is therefore taken
only when its name is one this listing could have returned to this caller: under
the request's prefix and one the caller may read. Else it is INVALID_ARGUMENT on
page_token: a listing never starts from, or echoes back, a name outside what the
caller may list.
"""

from __future__ import annotations

from collections.abc import Callable

from ._page_tokens import unseal
from ._validation import Violation


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
