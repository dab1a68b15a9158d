"""protobuf Timestamps of the store's unix milliseconds, for replies."""

from __future__ import annotations

from google.protobuf import timestamp_pb2


def timestamp(ms: int) -> timestamp_pb2.Timestamp:
    """A Timestamp of `ms` (unix milliseconds)."""
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(ms)
    return ts
