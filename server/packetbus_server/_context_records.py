"""What the context store keeps, as the servicers read it: a document's current version
(DocMeta), a commit's outcome, a change event; and their parsing from the store's replies.

Apart from the store (_context_store) so readers of these shapes (replies, uploads) need
not touch Redis, and the parsing is pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._replies import text

# "b" names the body key (an id the server makes per put), "up" the upload id the
# put named (older documents have none: their body key was named by it).
META_FIELDS = ("v", "s", "h", "c", "a", "u", "e", "b", "r", "g", "k", "up")


@dataclass(frozen=True, slots=True)
class DocMeta:
    """A document's current version, as stored."""

    name: str
    version: int
    size: int
    sha256_hex: str
    content_type: str
    author: str
    updated_ms: int
    expires_ms: int
    upload_id: str
    # The server's signed commit record (empty when it does not sign).
    commit: bytes = b""
    signature: bytes = b""
    key_id: str = ""
    # Its body's key (body:<id>): one of the put's own, never the client's upload
    # id, so a reused or raced upload id cannot write or drop a committed body.
    body_id: str = ""


@dataclass(frozen=True, slots=True)
class Commit:
    # "new", "dup", "stale" or "incomplete".
    status: str
    version: int
    # The stored version on "dup".
    meta: DocMeta | None = None


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    cursor: str
    kind: str
    name: str
    version: int
    size: int
    sha256_hex: str
    author: str
    changed_ms: int


def meta_of(name: str, values: Sequence[Any]) -> DocMeta | None:
    if values[0] is None:
        return None
    v = [text(x) if x is not None else "" for x in values[:8]]
    signed = [bytes(x) if x is not None else b"" for x in values[8:11]]
    upload = text(values[11]) if len(values) > 11 and values[11] else ""
    return DocMeta(
        name,
        int(v[0]),
        int(v[1]),
        v[2],
        v[3],
        v[4],
        int(v[5]),
        int(v[6]),
        upload or v[7],
        signed[0],
        signed[1],
        signed[2].decode(),
        v[7],
    )


def event_of(entry_id: Any, fields: dict[Any, Any]) -> ChangeEvent:
    f = {text(k): text(v) for k, v in fields.items()}
    return ChangeEvent(
        text(entry_id),
        f.get("k", ""),
        f.get("n", ""),
        int(f.get("v", "0")),
        int(f.get("s", "0")),
        f.get("h", ""),
        f.get("a", ""),
        int(f.get("u", "0")),
    )
