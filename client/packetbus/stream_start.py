"""Where a server stream "from now" began: the `packetbus-start-cursor` response header.

A subscription or watch opened at a position (`LATEST`, a watch with no cursor) is
fixed to the log's newest entry when the server admits it. The server sends that
cursor as the response header `packetbus-start-cursor` (initial metadata, before
any response), so a client that loses the stream before its first event reopens it
*after that cursor* and misses nothing, instead of reopening "from now" and
silently skipping what was stored in between. Shared by the server (which sends it)
and the clients (which read it); other-language clients read the same header.
"""

from __future__ import annotations

from collections.abc import Iterable

START_CURSOR_HEADER = "packetbus-start-cursor"


def start_cursor(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The start cursor a server sent in `metadata` (a call's initial metadata), or
    None when it sent none (a stream opened after a cursor, or an older server)."""
    for key, value in metadata or ():
        if key == START_CURSOR_HEADER:
            return value.decode() if isinstance(value, bytes) else value
    return None
