"""Gap signals for fan-out subscriptions: packets a subscriber missed are announced, never skipped.

The rule. A subscription stands at a cursor C (the last packet delivered, the
cursor it resumed after, or the end of the last gap it was told of). Packets
after C that it cannot deliver are a gap, announced once, before the packets
that follow it:

- the topic's horizon says entries newer than C left the log: trimmed by
  retention (reason TRIMMED), or lost when the whole log expired (EXPIRED).
  Entries leave a log only as a prefix, so everything from C up to the newest
  such entry is gone; how many is not known.
- entries after C are past their TTL when read (EXPIRED, counted).

A subscription that starts from a position (EARLIEST, LATEST) asked for what
the topic holds, so it is not told of what the topic no longer held when it
started: what had left the log before its first read, and packets that had
expired before it started. A gap's reason is TRIMMED when retention removed
any of its packets, else EXPIRED.
"""

from __future__ import annotations

from dataclasses import dataclass

from packetbus.v1 import packet_service_pb2

from ._cursors import cursor_order, newest_cursor
from ._log_pages import FollowPage, Horizon, LogEntry

TRIMMED = packet_service_pb2.GAP_REASON_TRIMMED
EXPIRED = packet_service_pb2.GAP_REASON_EXPIRED

Segment = tuple[packet_service_pb2.SubscriptionGap | None, list[LogEntry]]


def newer(cursor: str, than: str) -> bool:
    return bool(cursor) and cursor_order(cursor) > cursor_order(than)


def lost_after(
    horizon: Horizon, cursor: str
) -> tuple[str, packet_service_pb2.GapReason.ValueType] | None:
    """The newest entry after `cursor` that has left the log, and why; None when none has."""
    lost = newest_cursor(*(c for c in (horizon.trimmed, horizon.expired) if newer(c, cursor)))
    if not lost:
        return None
    return lost, TRIMMED if newer(horizon.trimmed, cursor) else EXPIRED


@dataclass(slots=True)
class _Pending:
    reason: packet_service_pb2.GapReason.ValueType
    resume_after: str
    # None: not known (entries that left the log are not counted).
    missed: int | None


class Follower:
    """One subscription's position, and the gap it has yet to announce.

    Feed it each page read after `cursor`; it returns what to send, in order:
    segments of packets, each after the gap (if any) that precedes them.
    """

    def __init__(self, cursor: str, *, resumed: bool, started_ms: int) -> None:
        # Where to read next: past everything delivered, announced or skipped.
        self.cursor = cursor
        # Where the subscriber stands, as a gap reports it.
        self._stands_at = cursor if resumed else ""
        # A start-position subscription ignores what had left the log before
        # its first read, and packets that had expired before it started.
        self._first_read_quiet = not resumed
        self._quiet_until_ms = 0 if resumed else started_ms
        self._pending: _Pending | None = None

    def take(self, page: FollowPage, now_ms: int) -> list[Segment]:
        self._note_losses(page.horizon)
        segments: list[Segment] = []
        for entry in page.entries:
            if entry.expires_at_ms <= now_ms:
                self._note_expired(entry, page.horizon.known)
                continue
            gap = self._take_gap()
            if gap is not None or not segments:
                segments.append((gap, []))
            segments[-1][1].append(entry)
            self._stands_at = entry.cursor
        self.cursor = newest_cursor(self.cursor, page.last_cursor or "")
        if page.complete and self._pending is not None:
            # At the log's end: say so now rather than when the next packet comes.
            segments.append((self._take_gap(), []))
        return segments

    def _note_losses(self, horizon: Horizon) -> None:
        lost = lost_after(horizon, self.cursor)
        quiet, self._first_read_quiet = self._first_read_quiet, False
        if lost is None:
            return
        newest, reason = lost
        if quiet:
            self.cursor = newest
        else:
            self._add(reason, newest, None)

    def _note_expired(self, entry: LogEntry, counted: bool) -> None:
        news = entry.expires_at_ms > self._quiet_until_ms
        if news or self._pending is not None:
            # Not news but inside a gap: the gap ends past it, so a subscriber
            # resuming after the gap does not read it again as news.
            self._add(EXPIRED, entry.cursor, (1 if news else 0) if counted else None)

    def _add(
        self, reason: packet_service_pb2.GapReason.ValueType, resume_after: str, missed: int | None
    ) -> None:
        self.cursor = newest_cursor(self.cursor, resume_after)
        pending = self._pending
        if pending is None:
            self._pending = _Pending(reason, resume_after, missed)
            return
        if reason == TRIMMED:
            pending.reason = TRIMMED
        pending.resume_after = newest_cursor(pending.resume_after, resume_after)
        pending.missed = (
            None if pending.missed is None or missed is None else pending.missed + missed
        )

    def _take_gap(self) -> packet_service_pb2.SubscriptionGap | None:
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        gap = packet_service_pb2.SubscriptionGap(
            last_cursor=self._stands_at,
            resume_after_cursor=pending.resume_after,
            missed_packets=pending.missed or 0,
            reason=pending.reason,
        )
        self._stands_at = pending.resume_after
        return gap
