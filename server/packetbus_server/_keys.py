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
|                              |        |             | tracking id, ``b`` = ``<batch id>       | (they live in it) |
|                              |        |             | <leaf>`` (server entries stored once),  |                   |
|                              |        |             | ``g`` = the one consumer                |                   |
|                              |        |             | group a requeued entry is for; and the  |                   |
|                              |        |             | topic's consumer groups                 |                   |
| ``pb:{<topic>}:groups``      | hash   | topic       | group name -> ``<ack deadline ms>       | none              |
|                              |        |             | <max attempts> <created ms>``           |                   |
| ``pb:{<topic>}:pull:<id>``   | list   | topic       | the cursors one pull leased, for the    | 60 s              |
|                              |        |             | store's retry of it (group_pull.lua)    |                   |
| ``pb:{<topic>}:horizon``     | hash   | topic       | what left the log, for subscribers'     | the log's expiry  |
|                              |        |             | gaps: ``t`` = newest entry trimmed by   | + retention, set  |
|                              |        |             | retention, ``x`` = newest entry of a    | at each dispatch; |
|                              |        |             | log that expired whole, ``l`` = newest  | none while it     |
|                              |        |             | entry a dispatch appended; and the      | holds limits      |
|                              |        |             | topic's own retention limits            |                   |
|                              |        |             | (scripts/lib/retention.lua): ``ma`` max |                   |
|                              |        |             | age ms, ``mp`` max packets, ``mb`` max  |                   |
|                              |        |             | bytes, ``wq`` = 1 work-queue, ``sb`` =  |                   |
|                              |        |             | the log's packet bytes while mb is set  |                   |
| ``pb:{<topic>}:batch:<id>``  | string | topic       | one dispatch call's sealed batch        | newest packet's   |
|                              |        |             | (_sealed_batch): its log entries carry  | expiry; carcel    |
|                              |        |             | ``b`` = ``<id> <leaf>`` in place of the | copies and        |
|                              |        |             | server's two ingest entries             | requeues extend it|
| ``pb:{<topic>}:hops:<tid>``  | hash   | topic       | custody entries after ingest: ``n`` =   | packet's expiry,  |
|                              |        |             | count, ``h`` = last entry hash, ``1``.. | or the carcel     |
|                              |        |             | ``n`` = entries; ``s:<group>`` = that   | retention once    |
|                              |        |             | group's last settlement; ``r:<group>``  | carceled          |
|                              |        |             | = that group's releases of it; ``rq`` = |                   |
|                              |        |             | last requeue ``<carcel id> <call id>    |                   |
|                              |        |             | <cursor>``                              |                   |
| ``pb:{<topic>}:carcel``      | stream | topic       | carceled packets: ``p``, ``n``, ``t``,  | carcel retention  |
|                              |        |             | ``i`` as in the log, ``c`` = cursor in  | after the newest  |
|                              |        |             | the log, ``r`` reason, ``d`` detail,    |                   |
|                              |        |             | ``s`` source, ``a`` delivery count;     |                   |
|                              |        |             | governance: ``c`` = ``policy``, ``u``   |                   |
|                              |        |             | rule id, ``v`` policy version           |                   |
| ``pb:{<topic>}:held``        | stream | topic       | packets a policy rule holds for         | newest held       |
|                              |        |             | approval: ``p``, ``n``, ``t``, ``i`` as | packet's expiry   |
|                              |        |             | in the log, ``u`` rule id, ``r`` reason,|                   |
|                              |        |             | ``v`` policy version                    |                   |
| ``pb:{<topic>}:polstats``    | hash   | topic       | governance counts: ``rule:<id>``,       | carcel retention, |
|                              |        |             | ``reason:<reason>``, ``decision:<kind>``| refreshed         |
| ``pb:{<topic>}:decisions``   | stream | topic       | governance decisions: ``k`` kind, ``i`` | carcel retention  |
|                              |        |             | tracking id, ``u`` rule, ``r`` reason,  | after the newest  |
|                              |        |             | ``v`` policy version, ``a`` actor       |                   |
| ``pb:{<topic>}:pkt:<tid>``   | string | topic       | the idempotency record: 32 bytes of     | the packet's      |
|                              |        |             | fingerprint (raw SHA-256), then the     | expiry (PXAT), so |
|                              |        |             | cursor; a packet a policy rejected or   | PEXPIRETIME is    |
|                              |        |             | holds has ``rejected:<carcel id>`` or   | its expiry        |
|                              |        |             | ``held:<held id>`` instead. Records of  |                   |
|                              |        |             | before issue 16 (``<64 hex> <cursor>    |                   |
|                              |        |             | <expiry ms>``) are still read: both     |                   |
|                              |        |             | forms in scripts/lib/records.lua        |                   |
| ``pb:{<queue>}:tasks``       | zset   | queue       | task id -> posted ms                    | newest task's     |
| ``pb:{<queue>}:leases``      | zset   | queue       | claimed task id -> lease end ms         | newest claimed    |
|                              |        |             |                                         | task's            |
| ``pb:{<queue>}:taskevents``  | stream | queue       | status changes (id, o, n, a, f, r)      | newest task's     |
| ``pb:{<queue>}:task:<id>``   | hash   | queue       | one task (fields: scripts/lib/tasks.lua)| task packet's TTL |
| ``pb:{<queue>}:ready:<cap>`` | zset   | queue       | queued tasks needing <cap>, by priority | newest task's     |
|                              |        |             | then posting order (member order)       |                   |
| ``pb:{<queue>}:results:<id>``| list   | queue       | serialized TaskResult per attempt       | task packet's TTL |
| ``pb:{<queue>}:carcelhops``  | set    | queue       | tasks carceled by a run-out lease whose | newest such task's|
|                              |        |             | signed ``carceled`` hop is pending      |                   |
| ``pb:{<queue>}:claimreq:<r>``| hash   | queue       | the claim made for request id <r>:      | the claim's lease |
|                              |        |             | ``t`` task id, ``f`` fencing token,     |                   |
|                              |        |             | ``w`` worker (a retried claim's answer) |                   |
| ``pb:{fnd:<h>}:findings``    | hash   | task (h =   | finding id -> 8-digit content length,   | newest finding's  |
|                              |        | SHA-256 of  | then the finding packet                 |                   |
|                              |        | its id, 16  |                                         |                   |
| ``pb:{fnd:<h>}:facts``       | hash   | hex digits) | finding id -> ``<fingerprint> <refutes> | newest finding's  |
|                              |        |             | <confidence> <subject>``                |                   |
| ``pb:{fnd:<h>}:order``       | list   |             | finding ids, first posted first         | newest finding's  |
| ``pb:loc:{<tid>}``           | string | tracking id | the topic a tracking id belongs to; on  | packet TTL (its   |
|                              |        |             | a single Redis a dispatched packet's    | expiry, PXAT,     |
|                              |        |             | record rides in it instead of           | when it holds the |
|                              |        |             | ``pkt:<tid>``: NUL, 32-byte fingerprint,| record)           |
|                              |        |             | cursor, space, topic (one key per       |                   |
|                              |        |             | packet: scripts/lib/records.lua)        |                   |
| ``pb:place:{<tid>}``         | string | tracking id | where a task, finding or record packet  | the packet's      |
|                              |        |             | lives: JSON ``[kind, resource, scope,   | expiry (PXAT)     |
|                              |        |             | item]`` (_placed_packets)               |                   |
| ``pb:topics``                | zset   | its own     | topic -> last dispatch or group created | 2 x max packet    |
|                              |        |             | (unix ms), for exporting every topic,   | TTL, refreshed    |
|                              |        |             | ListTopics and /metrics;                |                   |
|                              |        |             | ``INDEX_COMPLETE`` (score -inf) once a  |                   |
|                              |        |             | read backfilled it (_name_index)        |                   |
| ``pb:queues``                | zset   | its own     | task queue -> last post (unix ms), for  | 2 x max packet    |
|                              |        |             | /metrics; ``INDEX_COMPLETE`` as above   | TTL, refreshed    |
| ``pb:{keys}:all``            | hash   | keys        | key id -> SigningKey (public keys of    | none (a registry: |
|                              |        |             | servers and agents)                     | see below)        |
| ``pb:{keys}:agents``         | hash   | keys        | agent id -> its key ids, space-separated| none              |
| ``pb:{keys}:principals``     | hash   | keys        | agent id -> the authenticated principal | none              |
|                              |        |             | that registered its first key (its keys |                   |
|                              |        |             | are bound to it: register_agent_key.lua)|                   |
| ``pb:{ctx:<h>}:doc:<name>``  | hash   | scope (h =  | a document's current version: ``v``     | the document's    |
|                              |        | SHA-256 of  | version, ``s`` size, ``h`` SHA-256 hex, | TTL               |
|                              |        | the scope,  | ``c`` content type, ``a`` author, ``u`` |                   |
|                              |        | 16 hex      | committed ms, ``e`` expiry ms, ``b``    |                   |
|                              |        | digits)     | body id, ``r`` ``g`` ``k`` the server's |                   |
|                              |        |             | signed commit record, signature, key id,|                   |
|                              |        |             | ``up`` the upload id (none: ``b`` is it)|                   |
| ``pb:{ctx:<h>}:body:<id>``   | string | scope       | a put's bytes (by an id the server makes| upload TTL while  |
|                              |        |             | per put): staged, then one version's    | staged; then the  |
|                              |        |             | body                                    | document's; grace |
|                              |        |             |                                         | once replaced     |
| ``pb:{ctx:<h>}:ups:<name>``  | hash   | scope       | a document's commits by upload id: id ->| its newest        |
|                              |        |             | cmsgpack {v s h c a u e r g k} (as the  | commit's expiry   |
|                              |        |             | document's fields), the newest 100      | (kept through a   |
| ``pb:{ctx:<h>}:upo:<name>``  | zset   | scope       | those upload ids by commit ms (to drop  | delete)           |
|                              |        |             | the oldest)                             |                   |
| ``pb:{ctx:<h>}:names``       | zset   | scope       | document names (score 0, by name)       | newest document's |
| ``pb:{ctx:<h>}:events``      | stream | scope       | change events: ``k`` put/delete, ``n``  | newest document's |
|                              |        |             | name, ``v``, ``s``, ``h``, ``a``, ``u`` | (capped length)   |
| ``pb:{gctx}:map``            | hash   | its own     | the global context map: key -> value    | max context TTL,  |
|                              |        |             |                                         | refreshed on write|
| ``pb:{mem:<h>}:log``         | list   | agent (h as | an agent's memory log, newest first:    | per append (7 d   |
|                              |        | above)      | ``<entry id> LF <LogEntry bytes>``      | by default)       |
| ``pb:{trc:<h>}:log``         | list   | task+agent  | an agent's trace of a task, oldest first| per append        |
| ``pb:{mem:<h>}:logfp``,      | hash   | as its log  | the log's entries: entry id ->          | as its log        |
| ``pb:{trc:<h>}:logfp``       |        |             | fingerprint (what the entry means)      |                   |
| ``pb:{rec:<kind>}:r:<id>``   | string | record kind | 8-digit content length, then the record | the record's      |
|                              |        |             | packet (content, then its chain)        | retention         |
| ``pb:{rec:<kind>}:fp:<id>``  | string | record kind | the record packet's fingerprint         | the record's      |
| ``pb:{rec:<kind>}:index``    | zset   | record kind | record id -> stored ms (newest last)    | newest record's   |
| ``pb:{agents}:agent:<id>``   | hash   | agents      | one registered agent (fields: scripts/  | none: removed by  |
|                              |        |             | lib/agents.lua)                         | the reaper (LEFT) |
| ``pb:{agents}:ids``          | zset   | agents      | registered agent ids (score 0, by id)   | none (bounded by  |
|                              |        |             |                                         | max_agents)       |
| ``pb:{agents}:deadlines``    | zset   | agents      | agent id -> ms it turns stale (live) or | none              |
|                              |        |             | is removed (stale)                      |                   |
| ``pb:{agents}:events``       | stream | agents      | membership events (k, id, o, n, r and   | event retention,  |
|                              |        |             | the agent's fields)                     | capped length     |
| ``pb:{agents}:children:<id>``| set    | agents      | ids of the agents <id> spawned          | none (empty: gone)|
| ``pb:{agents}:queues:<id>``  | set    | agents      | task queues agent <id> claimed from     | none: removed     |
|                              |        |             |                                         | with the agent    |
| ``pb:{agents}:releasing``    | zset   | agents      | agent id -> ms it went stale or left,   | none (emptied by  |
|                              |        |             | while its claimed tasks are released    | the reapers)      |
| ``pb:{agents}:deregistered:``| list   | agents      | the ids one DeregisterAgent call        | 60 s              |
| ``<call id>``                |        |             | removed, for the store's retry of it    |                   |
| ``pb:{<tag>}:guard``         | none   | the tag's   | never written: a key every script that  | -                 |
|                              |        |             | derives keys is given on a Redis        |                   |
|                              |        |             | Cluster, so it cannot run while its     |                   |
|                              |        |             | slot migrates (see ``slot_guard``)      |                   |

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


def group_pull(topic: str, pull_id: str) -> str:
    return f"{PREFIX}:{{{topic}}}:pull:{pull_id}"


def topic_horizon(topic: str) -> str:
    return f"{PREFIX}:{{{topic}}}:horizon"


def ingest_batch(topic: str, batch_id: str) -> str:
    """A dispatch call's sealed batch, stored once per topic (_batch_refs)."""
    return f"{PREFIX}:{{{topic}}}:batch:{batch_id}"


def custody_hops(topic: str, tracking_id: str) -> str:
    return f"{PREFIX}:{{{topic}}}:hops:{tracking_id}"


def carcel(topic: str) -> str:
    return f"{PREFIX}:{{{topic}}}:carcel"


def held(topic: str) -> str:
    return f"{PREFIX}:{{{topic}}}:held"


def policy_stats(topic: str) -> str:
    return f"{PREFIX}:{{{topic}}}:polstats"


def policy_decisions(topic: str) -> str:
    return f"{PREFIX}:{{{topic}}}:decisions"


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


def task_ready(queue: str, capability: str) -> str:
    """The ready set of tasks needing `capability` ("" for none); lib/tasks.lua derives the same."""
    return f"{PREFIX}:{{{queue}}}:ready:{capability}"


def task_results(queue: str, task_id: str) -> str:
    return f"{PREFIX}:{{{queue}}}:results:{task_id}"


def task_carcel_hops(queue: str) -> str:
    """Derived inside the task scripts too (scripts/lib/tasks.lua)."""
    return f"{PREFIX}:{{{queue}}}:carcelhops"


def task_claim_request(queue: str, request_id: str) -> str:
    """Derived inside scripts/task_claim.lua from the queue prefix; named here for the
    layout's sake (and for tests)."""
    return f"{PREFIX}:{{{queue}}}:claimreq:{request_id}"


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


def packet_place(tracking_id: str) -> str:
    """Where a task, finding or record packet lives (_placed_packets)."""
    return f"{PREFIX}:place:{{{tracking_id}}}"


TOPICS = f"{PREFIX}:topics"
QUEUES = f"{PREFIX}:queues"
# A member of TOPICS and QUEUES (score -inf, so no time range holds it) that says
# the index names every topic / queue in the store: written by the read (a /metrics
# scrape or ListTopics) that backfilled it (_name_index), gone with the index's expiry.
# NUL cannot start a topic or queue name (_field_rules), so it names neither.
INDEX_COMPLETE = "\x00complete"
SIGNING_KEYS = f"{PREFIX}:{{keys}}:all"
AGENT_KEYS = f"{PREFIX}:{{keys}}:agents"
AGENT_KEY_PRINCIPALS = f"{PREFIX}:{{keys}}:principals"


def _hashed(prefix: str, value: str) -> str:
    # Scopes and agent ids may hold braces, which would break a hash tag.
    return prefix + hashlib.sha256(value.encode()).hexdigest()[:16]


def context_prefix(scope: str) -> str:
    """What context scripts derive a scope's per-document keys from."""
    return f"{PREFIX}:{{{_hashed('ctx:', scope)}}}:"


def context_doc(scope: str, name: str) -> str:
    return f"{context_prefix(scope)}doc:{name}"


def context_body(scope: str, body_id: str) -> str:
    return f"{context_prefix(scope)}body:{body_id}"


def context_uploads(scope: str, name: str) -> str:
    return f"{context_prefix(scope)}ups:{name}"


def context_upload_order(scope: str, name: str) -> str:
    return f"{context_prefix(scope)}upo:{name}"


def context_names(scope: str) -> str:
    return f"{context_prefix(scope)}names"


def context_events(scope: str) -> str:
    return f"{context_prefix(scope)}events"


GLOBAL_CONTEXT = f"{PREFIX}:{{gctx}}:map"


def memory_log(agent: str) -> str:
    return f"{PREFIX}:{{{_hashed('mem:', agent)}}}:log"


def trace_log(task_id: str, agent: str) -> str:
    return f"{PREFIX}:{{{_hashed('trc:', task_id + chr(10) + agent)}}}:log"


def log_fingerprints(log: str) -> str:
    """The fingerprints of the entries of `log` (a memory_log or trace_log key)."""
    return log.removesuffix(":log") + ":logfp"


def record(kind: str, record_id: str) -> str:
    return f"{PREFIX}:{{rec:{kind}}}:r:{record_id}"


def record_fingerprint(kind: str, record_id: str) -> str:
    return f"{PREFIX}:{{rec:{kind}}}:fp:{record_id}"


def record_index(kind: str) -> str:
    return f"{PREFIX}:{{rec:{kind}}}:index"


AGENTS_PREFIX = f"{PREFIX}:{{agents}}:"
AGENT_IDS = f"{AGENTS_PREFIX}ids"
AGENT_DEADLINES = f"{AGENTS_PREFIX}deadlines"
AGENT_EVENTS = f"{AGENTS_PREFIX}events"
AGENTS_RELEASING = f"{AGENTS_PREFIX}releasing"


def agent(agent_id: str) -> str:
    return f"{AGENTS_PREFIX}agent:{agent_id}"


def agent_children(agent_id: str) -> str:
    return f"{AGENTS_PREFIX}children:{agent_id}"


def agent_queues(agent_id: str) -> str:
    return f"{AGENTS_PREFIX}queues:{agent_id}"


# A string the server sets (for a minute) only to make a later WAITAOF cover every
# write before it, after a write whose fsync was not confirmed (see _durability).
DURABILITY_BARRIER = f"{PREFIX}:durability:barrier"


def slot_guard(key: str) -> str:
    """A key in `key`'s hash slot that is never written (pb:{<tag>}:guard).

    A script that derives keys (builds them in Lua instead of taking them in
    KEYS) is given this key too on a Redis Cluster. While the slot migrates,
    the node refuses a command whose keys it does not all hold (TRYAGAIN) and
    this one it never holds: the script waits, retried, for the slot to settle,
    and never runs on one node while some of its derived keys are on the other
    (there it would fail halfway, after its first writes, or read a key that
    has not arrived yet as missing). Raises ValueError if `key` has no tag.
    """
    start = key.find("{")
    end = key.find("}", start + 1)
    if start < 0 or end <= start + 1:
        raise ValueError(f"{key!r} has no hash tag")
    return f"{PREFIX}:{key[start : end + 1]}:guard"
