"""How the server reads the small values of requests: cursors, lengths, integers.

Kept apart from the packet rules so every service reads them the same way.
"""

from __future__ import annotations

import re

# A cursor (a stream entry id, "<ms>-<seq>"): receipts' cursors, carcel entry ids.
# ASCII digits only: `\d` and int() also take other scripts' digits, which Redis
# refuses ("Invalid stream ID") after the request was let in.
STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}\Z")
# Redis stream ids are two unsigned 64-bit numbers; the very largest id has no
# entry after it, so as an exclusive start ("(<id>") Redis refuses it too.
_U64_MAX = 2**64 - 1
_LARGEST_ID = f"{_U64_MAX}-{_U64_MAX}"

# Lua numbers are doubles: an integer a script compares or stores must be below
# 2^53 to keep its exact value.
MAX_SAFE_INTEGER = 2**53 - 1

# Every length limit on text (ids, names, free text) is in UTF-8 bytes, the one
# measure that means the same in every language and in the keys names become.
MAX_AGENT_ID_BYTES = 255
# An agent's inbox is the topic "inbox/<agent id>", the id's bytes outside
# [A-Za-z0-9_.-] written ":<hex>" (packetbus.inbox_topic): up to three characters a
# byte. Inbox topics may be that long, so every agent id that registers has an inbox.
_INBOX_PREFIX = "inbox/"
MAX_INBOX_TOPIC_LENGTH = len(_INBOX_PREFIX) + 3 * MAX_AGENT_ID_BYTES


def is_stream_id(value: str) -> bool:
    """Whether `value` is a cursor Redis takes: "<ms>-<seq>", ASCII digits, each < 2^64."""
    if not STREAM_ID.match(value) or value == _LARGEST_ID:
        return False
    millis, _, sequence = value.partition("-")
    return int(millis) <= _U64_MAX and int(sequence) <= _U64_MAX


def utf8_length(value: str) -> int:
    """The length of `value` in UTF-8 bytes, the measure of every text limit."""
    return len(value) if value.isascii() else len(value.encode())


def inbox_topic_prefixed(topic: str) -> bool:
    """Whether `topic` is in the inbox namespace (and may be MAX_INBOX_TOPIC_LENGTH long)."""
    return topic.startswith(_INBOX_PREFIX)


def longest_name(max_topic_length: int) -> int:
    """The longest a topic or queue name may be, in bytes: `max_topic_length`, or an
    inbox's, whichever is more. A prefix filtering names (ListTopics,
    ListTaskQueues) is refused only beyond it: a name that long exists."""
    return max(max_topic_length, MAX_INBOX_TOPIC_LENGTH)


def inbox_owner(topic: str) -> str | None:
    """The agent id whose inbox `topic` is, or None for a topic outside ``inbox/``.

    Inverts `packetbus.inbox_topic`: ``inbox/worker-1`` is ``worker-1``; a byte
    written ``:<hex>`` is that byte (``inbox/a:2fb`` is ``a/b``). A topic under
    ``inbox/`` no agent's inbox spells exactly (``inbox/x/y``, a stray ``:``) is
    read as written, escapes decoded where they parse: it is still an inbox, of
    the agent id it reads as, never a topic anyone may read.
    """
    if not inbox_topic_prefixed(topic):
        return None
    encoded = topic[len(_INBOX_PREFIX) :]
    if ":" not in encoded:
        return encoded
    out = bytearray()
    i = 0
    while i < len(encoded):
        escape = encoded[i + 1 : i + 3]
        if encoded[i] == ":" and len(escape) == 2 and _is_hex(escape):
            out.append(int(escape, 16))
            i += 3
        else:
            out += encoded[i].encode()
            i += 1
    return out.decode(errors="replace")


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)
