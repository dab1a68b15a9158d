"""Appends to memory logs and traces: once per entry id, what an entry means
fingerprinted so a rebuilt entry answers as the first did."""

from __future__ import annotations

import hashlib

import grpc

from packetbus.v1 import context_service_pb2 as pb

from . import _status
from ._context_store import ContextStore
from ._limits import Limits
from ._storage_errors import storage_errors


def entry_fingerprint(entry: pb.LogEntry) -> str:
    """What a memory or trace entry means, as 64 hex digits: every field but
    recorded_at, which is stamped when the entry is built (a producer that builds
    it again after a crash stamps it again), as a packet's dispatched_at is."""
    meant = pb.LogEntry()
    meant.CopyFrom(entry)
    meant.ClearField("recorded_at")
    return hashlib.sha256(meant.SerializeToString(deterministic=True)).hexdigest()


async def append_entry(
    store: ContextStore,
    limits: Limits,
    context: grpc.aio.ServicerContext,
    log: str,
    entry: pb.LogEntry,
    *,
    newest_first: bool,
    ttl_ms: int,
) -> int:
    """Append `entry` to `log` once per entry id: the log's length after. The same
    entry again, or rebuilt (another recorded_at), answers as the first did; other
    contents under its id are ALREADY_EXISTS."""
    async with storage_errors(context):
        appended, length = await store.log_append(
            log,
            entry.entry_id,
            entry.SerializeToString(),
            entry_fingerprint(entry),
            newest_first=newest_first,
            cap=limits.max_log_entries,
            ttl_ms=ttl_ms,
        )
    if appended is None:
        await _status.abort_with_reason(
            context,
            grpc.StatusCode.ALREADY_EXISTS,
            f"entry_id {entry.entry_id} is already in the log with other contents; "
            "give a new entry a new id",
            "ENTRY_ID_IN_USE",
        )
    return length
