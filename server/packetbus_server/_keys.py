"""The Redis key layout: every key the server writes is named here and nowhere else.

Each key family has exactly one Redis type and one prefix, so WRONGTYPE cannot
happen by construction. Keys that one Lua script touches together share a
``{hash tag}``, so every script runs on one slot of a Redis Cluster.

| key                          | type   | slot        | holds                                   | TTL               |
|------------------------------|--------|-------------|-----------------------------------------|-------------------|
| ``pb:{<topic>}:log``         | stream | topic       | one entry per packet: ``p`` = packet    | newest packet's   |
|                              |        |             | bytes (content, then chain), ``n`` =    | expiry            |
|                              |        |             | content length, ``t`` = TTL ms (expires |                   |
|                              |        |             | at the entry id's ms + t)               |                   |
| ``pb:{<topic>}:pkt:<tid>``   | string | topic       | ``<fingerprint> <cursor> <expiry ms>``  | packet TTL        |
|                              |        |             | the idempotency record                  |                   |
| ``pb:loc:{<tid>}``           | string | tracking id | the topic a tracking id belongs to      | packet TTL        |
| ``pb:topics``                | zset   | its own     | topic -> last dispatch (unix ms), for   | 2 x max packet    |
|                              |        |             | exporting every topic                   | TTL, refreshed    |
| ``pb:{keys}:all``            | hash   | keys        | key id -> SigningKey (public keys of    | none (a registry: |
|                              |        |             | servers and agents)                     | see below)        |
| ``pb:{keys}:agents``         | hash   | keys        | agent id -> its key ids, space-separated| none              |

The key registry has no TTL on purpose: a public key must outlive every packet
it signed, and an agent's identity must not lapse silently. It holds public
keys only (a few hundred bytes each), never private ones.
"""

from __future__ import annotations

PREFIX = "pb"


def topic_log(topic: str) -> str:
    return f"{PREFIX}:{{{topic}}}:log"


def packet_record(topic: str, tracking_id: str) -> str:
    return f"{PREFIX}:{{{topic}}}:pkt:{tracking_id}"


def packet_location(tracking_id: str) -> str:
    return f"{PREFIX}:loc:{{{tracking_id}}}"


TOPICS = f"{PREFIX}:topics"
SIGNING_KEYS = f"{PREFIX}:{{keys}}:all"
AGENT_KEYS = f"{PREFIX}:{{keys}}:agents"
