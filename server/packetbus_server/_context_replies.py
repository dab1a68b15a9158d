"""Reply building for ContextService: stored document metadata and change events
as the wire's ContextDocument and ContextChange (times in milliseconds since the
epoch become Timestamps; SHA-256 hex digests become 32 bytes)."""

from __future__ import annotations

from packetbus.v1 import context_service_pb2 as pb

from ._context_records import ChangeEvent, DocMeta
from ._timestamps import timestamp

_KINDS = {"put": pb.CONTEXT_CHANGE_KIND_PUT, "delete": pb.CONTEXT_CHANGE_KIND_DELETE}


def document(scope: str, meta: DocMeta) -> pb.ContextDocument:
    """The version `meta` of a document in `scope`, as replies carry it."""
    return pb.ContextDocument(
        scope=scope,
        name=meta.name,
        version=meta.version,
        size=meta.size,
        sha256=bytes.fromhex(meta.sha256_hex),
        content_type=meta.content_type,
        author=meta.author,
        updated_at=timestamp(meta.updated_ms),
        expires_at=timestamp(meta.expires_ms),
        commit=meta.commit,
        commit_signature=meta.signature,
        commit_key_id=meta.key_id,
    )


def change(scope: str, e: ChangeEvent) -> pb.ContextChange:
    """A change event of `scope`'s log; an unknown kind is UNSPECIFIED."""
    return pb.ContextChange(
        cursor=e.cursor,
        kind=_KINDS.get(e.kind, pb.CONTEXT_CHANGE_KIND_UNSPECIFIED),
        scope=scope,
        name=e.name,
        version=e.version,
        size=e.size,
        sha256=bytes.fromhex(e.sha256_hex),
        author=e.author,
        changed_at=timestamp(e.changed_ms),
    )
