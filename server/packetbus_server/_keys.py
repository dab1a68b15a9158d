"""The Redis key layout: every key the server writes is named here and nowhere else.

Each key family has exactly one Redis type and one prefix, so WRONGTYPE cannot
happen by construction. Keys that one Lua script touches together share a
``{hash tag}``, so every script runs on one slot of a Redis Cluster.

| key                          | type   | slot        | holds                                   | TTL               |
|------------------------------|--------|-------------|-----------------------------------------|-------------------|
| ``pb:{<topic>}:log``         | stream | topic       | one entry per packet: ``p`` = packet    | newest packet's   |
|                              |        |             | bytes, ``t`` = TTL ms (expires at the   | expiry            |
|                              |        |             | entry id's ms + t)                      |                   |
| ``pb:{<topic>}:pkt:<tid>``   | string | topic       | ``<fingerprint> <cursor> <expiry ms>``  | packet TTL        |
|                              |        |             | the idempotency record                  |                   |
| ``pb:loc:{<tid>}``           | string | tracking id | the topic a tracking id belongs to      | packet TTL        |
"""

from __future__ import annotations

PREFIX = "pb"


def topic_log(topic: str) -> str:
    return f"{PREFIX}:{{{topic}}}:log"


def packet_record(topic: str, tracking_id: str) -> str:
    return f"{PREFIX}:{{{topic}}}:pkt:{tracking_id}"


def packet_location(tracking_id: str) -> str:
    return f"{PREFIX}:loc:{{{tracking_id}}}"
