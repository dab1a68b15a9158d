"""The PutContext upload path: a document's chunks received and staged, their size
and SHA-256 checked against the header, the new version signed (a ContextCommit
record, when the server signs) and committed by one compare-and-set script
(_context_store, scripts/context_commit.lua).

A put that repeats a committed upload id answers as that commit did (_same_upload);
an upload that fails midway is discarded (or expires on its own). Each put stages
its bytes under a body id of its own, never under the client's upload id.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator

import grpc

from packetbus._context import COMMIT_DOMAIN
from packetbus.v1 import context_service_pb2 as pb

from . import _status
from ._clock import StoreClock
from ._context_records import DocMeta
from ._context_replies import document
from ._context_store import ContextStore
from ._custodian import Custodian
from ._limits import Limits
from ._storage_errors import storage_errors
from ._timestamps import timestamp
from ._validation import Violation

# An unconditional put retries its compare-and-set this often under contention.
_UNCONDITIONAL_ATTEMPTS = 8
# Change events outlive the documents they tell of by this much, so a watcher
# that was away a while can still resume.
EVENTS_RETENTION_MS = 86400 * 1000


class ContextUpload:
    """Receives, checks, signs and commits document uploads (PutContext after its header)."""

    def __init__(
        self, store: ContextStore, custodian: Custodian, limits: Limits, *, clock: StoreClock
    ) -> None:
        self._store = store
        self._custodian = custodian
        self._limits = limits
        # The store's clock: times are judged and stamped by it, as every replica does.
        self._clock = clock

    async def receive(
        self,
        context: grpc.aio.ServicerContext,
        h: pb.PutContextHeader,
        request_iterator: AsyncIterator[pb.PutContextRequest],
    ) -> pb.PutContextResponse:
        """The rest of an upload whose header `h` is valid, authorized and allowed by the
        policy: committed (created=True), or the replay of its upload id (created=False).
        Fails the call INVALID_ARGUMENT (chunks, size, digest), ABORTED (stale version,
        expired staging) or ALREADY_EXISTS (an upload id reused for other bytes)."""
        violations: list[Violation] = []
        async with storage_errors(context):
            current = await self._store.meta(h.scope, h.name)
        replay = bool(h.upload_id) and current is not None and current.upload_id == h.upload_id
        # The bytes are staged under an id of this call's own: the upload id is the
        # client's, and the same one may come from a retry racing this call, or name
        # another document's commit; staged under it, this call would overwrite
        # that body, or delete it when it fails.
        body_id = str(uuid.uuid4())
        upload_id = h.upload_id or body_id
        staged = False
        committed = False
        try:
            hasher = hashlib.sha256()
            offset = 0
            upload_ttl_ms = self._limits.context_upload_ttl_seconds * 1000
            async for message in request_iterator:
                chunk = message.chunk
                if message.WhichOneof("part") != "chunk":
                    violations.append(Violation("header", "ONCE", "comes once, first"))
                elif len(chunk) > self._limits.max_context_chunk_bytes:
                    violations.append(
                        Violation(
                            "chunk",
                            "LENGTH",
                            f"at most {self._limits.max_context_chunk_bytes} bytes per chunk",
                        )
                    )
                elif offset + len(chunk) > h.size:
                    violations.append(
                        Violation("header.size", "SIZE_MISMATCH", "more bytes came than declared")
                    )
                if violations:
                    await _status.abort_invalid(context, "invalid context upload", violations)
                if not replay:
                    staged = True
                    async with storage_errors(context):
                        await self._store.stage(h.scope, body_id, offset, chunk, upload_ttl_ms)
                hasher.update(chunk)
                offset += len(chunk)
            if offset == 0 and not replay:  # an empty document has a body too
                staged = True
                async with storage_errors(context):
                    await self._store.stage(h.scope, body_id, 0, b"", upload_ttl_ms)
            if offset != h.size:
                violations.append(
                    Violation(
                        "header.size",
                        "SIZE_MISMATCH",
                        f"{h.size} bytes declared, {offset} came",
                    )
                )
            elif hasher.digest() != h.sha256:
                violations.append(
                    Violation("header.sha256", "DIGEST_MISMATCH", "the bytes have another SHA-256")
                )
            if violations:
                await _status.abort_invalid(context, "invalid context upload", violations)
            if replay:
                assert current is not None
                await same_upload(context, h, current)
                return pb.PutContextResponse(document=document(h.scope, current), created=False)
            response = await self._commit(context, h, upload_id, body_id, current)
            # A replay answered by the commit made first leaves this call's bytes unused.
            committed = response.created
            return response
        finally:
            if staged and not committed:
                # Best effort: an abandoned upload also expires on its own.
                with contextlib.suppress(Exception):
                    await self._store.discard(h.scope, body_id)

    def _sign(
        self, h: pb.PutContextHeader, upload_id: str, version: int, now_ms: int
    ) -> tuple[bytes, bytes, str]:
        """The signed commit record of `version`: (record, signature, key id)."""
        if not self._custodian.signing:
            return b"", b"", ""
        record = pb.ContextCommit(
            scope=h.scope,
            name=h.name,
            version=version,
            size=h.size,
            sha256=h.sha256,
            content_type=h.content_type,
            author=h.author,
            committed_at=timestamp(now_ms),
            server_id=self._custodian.server_id,
            upload_id=upload_id,
        ).SerializeToString(deterministic=True)
        signer = self._custodian.keyring.active
        return record, signer.sign(COMMIT_DOMAIN, record), signer.key_id

    async def _commit(
        self,
        context: grpc.aio.ServicerContext,
        h: pb.PutContextHeader,
        upload_id: str,
        body_id: str,
        current: DocMeta | None,
    ) -> pb.PutContextResponse:
        ttl_ms = (h.ttl_seconds or self._limits.default_context_ttl_seconds) * 1000
        conditional = h.HasField("expected_version")
        # The version is signed before the script runs, so the script is always a
        # compare-and-set; an unconditional put re-reads and tries again when
        # another writer got in between.
        expected = h.expected_version if conditional else (current.version if current else 0)
        for _ in range(_UNCONDITIONAL_ATTEMPTS):
            now_ms = self._clock.now_ms()
            record, signature, key_id = self._sign(h, upload_id, expected + 1, now_ms)
            async with storage_errors(context):
                commit = await self._store.commit(
                    h.scope,
                    h.name,
                    upload_id,
                    body_id=body_id,
                    upload_memos=self._limits.context_upload_memos,
                    expected_version=expected,
                    size=h.size,
                    sha256_hex=h.sha256.hex(),
                    content_type=h.content_type,
                    author=h.author,
                    now_ms=now_ms,
                    expires_ms=now_ms + ttl_ms,
                    grace_ms=self._limits.context_replaced_grace_seconds * 1000,
                    max_events=self._limits.max_context_events,
                    events_until_ms=now_ms + ttl_ms + EVENTS_RETENTION_MS,
                    commit=record,
                    signature=signature,
                    key_id=key_id,
                )
            if commit.status != "stale" or conditional:
                break
            expected = commit.version
        if commit.status == "stale":
            await context.abort(
                grpc.StatusCode.ABORTED,
                f"context {h.scope}/{h.name} is at version {commit.version}, "
                f"not {expected}; read it again and retry",
            )
        if commit.status == "incomplete":
            await context.abort(
                grpc.StatusCode.ABORTED,
                f"the staged upload holds {commit.version} of {h.size} bytes "
                "(it expired midway?); upload again",
            )
        if commit.status == "dup":
            assert commit.meta is not None
            await same_upload(context, h, commit.meta)
            return pb.PutContextResponse(document=document(h.scope, commit.meta), created=False)
        meta = DocMeta(
            h.name,
            commit.version,
            h.size,
            h.sha256.hex(),
            h.content_type,
            h.author,
            now_ms,
            now_ms + ttl_ms,
            upload_id,
            record,
            signature,
            key_id,
            body_id,
        )
        return pb.PutContextResponse(document=document(h.scope, meta), created=True)


async def same_upload(
    context: grpc.aio.ServicerContext, h: pb.PutContextHeader, committed: DocMeta
) -> None:
    """A put repeating an upload id must mean what its commit did (the bytes, their
    media type and author; not when it was sent), or it is ALREADY_EXISTS."""
    if (committed.sha256_hex, committed.content_type, committed.author) != (
        h.sha256.hex(),
        h.content_type,
        h.author,
    ):
        await _status.abort_with_reason(
            context,
            grpc.StatusCode.ALREADY_EXISTS,
            f"upload {committed.upload_id} committed other bytes, media type or author",
            "UPLOAD_ID_IN_USE",
        )
