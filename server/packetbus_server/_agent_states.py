"""AgentService replies: an agent hash as an Agent (judged live or stale by the
store's clock), a membership log entry as a MembershipEvent."""

from __future__ import annotations

from collections.abc import Mapping

from packetbus.v1 import agent_service_pb2 as pb

from ._agent_store import Fields
from ._replies import text
from ._timestamps import timestamp

_KINDS = {
    b"joined": pb.MEMBERSHIP_EVENT_KIND_JOINED,
    b"left": pb.MEMBERSHIP_EVENT_KIND_LEFT,
    b"stale": pb.MEMBERSHIP_EVENT_KIND_STALE,
    b"state_changed": pb.MEMBERSHIP_EVENT_KIND_STATE_CHANGED,
    b"recovered": pb.MEMBERSHIP_EVENT_KIND_RECOVERED,
    b"updated": pb.MEMBERSHIP_EVENT_KIND_UPDATED,
}


def is_live(f: Mapping[bytes, bytes], now_ms: int) -> bool:
    """The registry's rule: an agent hash is live when it says so (lv) and its
    deadline (dl, unix ms) is after `now_ms` (the store's clock; 0: not judged).
    Past its deadline an agent is stale, whether or not a sweep has run yet."""
    deadline = int(f.get(b"dl", b"0") or 0)
    return f.get(b"lv") == b"live" and (deadline > now_ms or now_ms == 0)


def agent_from_fields(agent_id: str, f: Mapping[bytes, bytes], now_ms: int) -> pb.Agent:
    """An agent hash (or an event's snapshot of one) as an Agent."""
    agent = pb.Agent.FromString(f.get(b"p", b""))
    agent.id = agent_id
    agent.state = text(f.get(b"s", b""))
    deadline = int(f.get(b"dl", b"0") or 0)
    live = is_live(f, now_ms)
    agent.liveness = pb.AGENT_LIVENESS_LIVE if live else pb.AGENT_LIVENESS_STALE
    agent.registered_at.CopyFrom(timestamp(int(f.get(b"ra", b"0") or 0)))
    agent.last_heartbeat_at.CopyFrom(timestamp(int(f.get(b"hb", b"0") or 0)))
    agent.deadline.CopyFrom(timestamp(deadline))
    return agent


def membership_event(entry: tuple[bytes, Fields]) -> pb.MembershipEvent:
    """A membership log entry (id "<ms>-<seq>", fields) as a MembershipEvent."""
    entry_id, f = entry
    cursor = text(entry_id)
    return pb.MembershipEvent(
        cursor=cursor,
        kind=_KINDS.get(bytes(f[b"k"]), pb.MEMBERSHIP_EVENT_KIND_UNSPECIFIED),
        # A snapshot as of the event: its liveness as stored then, not re-judged now.
        agent=agent_from_fields(text(f[b"id"]), f, 0),
        old_state=text(f.get(b"o", b"")),
        new_state=text(f.get(b"n", b"")),
        at=timestamp(int(cursor.split("-")[0])),
        reason=text(f.get(b"r", b"")),
    )


def cursor_key(cursor: str) -> tuple[int, int]:
    """A cursor "<ms>-<seq>" as (ms, seq), to order cursors."""
    ms, seq = cursor.split("-")
    return int(ms), int(seq)
