"""The Redis key layout: every key the server writes is named here and nowhere else.

Each key family has exactly one Redis type and one prefix, so WRONGTYPE cannot
happen by construction. Keys that one Lua script touches together share a
``{hash tag}``, so every script runs on one slot of a Redis Cluster.

| key                          | type   | slot        | holds                                   | TTL               |
|------------------------------|--------|-------------|-----------------------------------------|-------------------|
| ``pb:{<topic>}:log``         | stream | topic       | one entry per packet: ``p`` = packet    | newest packet's   |
|                              |        |             | bytes (content, then chain), ``n`` =    | expiry; none while|
|                              |        |             | content length, ``t`` = TTL ms (expires | the topic has     |
|                              |        |             | at the entry id's ms + t), ``i`` =      | consumer groups   |
|                              |        |             | tracking id, ``g`` = the one consumer   | (they live in it) |
|                              |        |             | group a requeued entry is for; and the  |                   |
|                              |        |             | topic's consumer groups                 |                   |
| ``pb:{<topic>}:groups``      | hash   | topic       | group name -> ``<ack deadline ms>       | none              |
|                              |        |             | <max attempts> <created ms>``           |                   |
| ``pb:{<topic>}:horizon``     | hash   | topic       | what left the log, for subscribers'     | the log's expiry  |
|                              |        |             | gaps: ``t`` = newest entry trimmed by   | + retention, set  |
|                              |        |             | retention, ``x`` = newest entry of a    | at each dispatch  |
|                              |        |             | log that expired whole, ``l`` = newest  |                   |
|                              |        |             | entry a dispatch appended               |                   |
| ``pb:{<topic>}:hops:<tid>``  | hash   | topic       | custody entries after ingest: ``n`` =   | packet's expiry,  |
|                              |        |             | count, ``h`` = last entry hash, ``1``.. | or the carcel     |
|                              |        |             | ``n`` = entries; ``s:<group>`` = that   | retention once    |
|                              |        |             | group's last settlement                 | carceled          |
| ``pb:{<topic>}:carcel``      | stream | topic       | carceled packets: ``p``, ``n``, ``t``,  | carcel retention  |
|                              |        |             | ``i`` as in the log, ``c`` = cursor in  | after the newest  |
|                              |        |             | the log, ``r`` reason, ``d`` detail,    |                   |
|                              |        |             | ``s`` source, ``a`` delivery count      |                   |
| ``pb:{<topic>}:pkt:<tid>``   | string | topic       | ``<fingerprint> <cursor> <expiry ms>``  | packet TTL        |
|                              |        |             | the idempotency record                  |                   |
| ``pb:{<queue>}:tasks``       | zset   | queue       | task id -> posted ms                    | newest task's     |
| ``pb:{<queue>}:leases``      | zset   | queue       | claimed task id -> lease end ms         | newest claimed    |
|                              |        |             |                                         | task's            |
| ``pb:{<queue>}:taskevents``  | stream | queue       | status changes (id, o, n, a, f, r)      | newest task's     |
| ``pb:{<queue>}:task:<id>``   | hash   | queue       | one task (fields: scripts/lib/tasks.lua)| task packet's TTL |
| ``pb:{<queue>}:ready:<cap>`` | zset   | queue       | queued tasks needing <cap>, by priority | newest task's     |
|                              |        |             | then posting order (member order)       |                   |
| ``pb:{<queue>}:results:<id>``| list   | queue       | serialized TaskResult per attempt       | task packet's TTL |
| ``pb:{fnd:<h>}:findings``    | hash   | task (h =   | finding id -> 8-digit content length,   | newest finding's  |
|                              |        | SHA-256 of  | then the finding packet                 |                   |
|                              |        | its id, 16  |                                         |                   |
| ``pb:{fnd:<h>}:facts``       | hash   | hex digits) | finding id -> ``<fingerprint> <refutes> | newest finding's  |
|                              |        |             | <confidence> <subject>``                |                   |
| ``pb:{fnd:<h>}:order``       | list   |             | finding ids, first posted first         | newest finding's  |
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

import hashlib

PREFIX = "pb"


def topic_log(topic: str) -> str:
    return f"{PREFIX}:{{{topic}}}:log"


def packet_record(topic: str, tracking_id: str) -> str:
    return f"{PREFIX}:{{{topic}}}:pkt:{tracking_id}"


def topic_groups(topic: str) -> str:
    return f"{PREFIX}:{{{topic}}}:groups"


def topic_horizon(topic: str) -> str:
    return f"{PREFIX}:{{{topic}}}:horizon"


def custody_hops(topic: str, tracking_id: str) -> str:
    return f"{PREFIX}:{{{topic}}}:hops:{tracking_id}"


def carcel(topic: str) -> str:
    return f"{PREFIX}:{{{topic}}}:carcel"


def queue_prefix(queue: str) -> str:
    """What task scripts derive a queue's per-task keys from (scripts/lib/tasks.lua)."""
    return f"{PREFIX}:{{{queue}}}:"


def task_index(queue: str) -> str:
    return f"{PREFIX}:{{{queue}}}:tasks"


def task_leases(queue: str) -> str:
    return f"{PREFIX}:{{{queue}}}:leases"


def task_events(queue: str) -> str:
    return f"{PREFIX}:{{{queue}}}:taskevents"


def task(queue: str, task_id: str) -> str:
    return f"{PREFIX}:{{{queue}}}:task:{task_id}"


def task_results(queue: str, task_id: str) -> str:
    return f"{PREFIX}:{{{queue}}}:results:{task_id}"


def _finding_tag(task_id: str) -> str:
    # Task ids may hold braces, which would break a hash tag: hashed instead.
    return "fnd:" + hashlib.sha256(task_id.encode()).hexdigest()[:16]


def task_findings(task_id: str) -> str:
    return f"{PREFIX}:{{{_finding_tag(task_id)}}}:findings"


def task_finding_facts(task_id: str) -> str:
    return f"{PREFIX}:{{{_finding_tag(task_id)}}}:facts"


def task_finding_order(task_id: str) -> str:
    return f"{PREFIX}:{{{_finding_tag(task_id)}}}:order"


def packet_location(tracking_id: str) -> str:
    return f"{PREFIX}:loc:{{{tracking_id}}}"


TOPICS = f"{PREFIX}:topics"
SIGNING_KEYS = f"{PREFIX}:{{keys}}:all"
AGENT_KEYS = f"{PREFIX}:{{keys}}:agents"
