"""Lua scripts, each loaded from its own file under scripts/, run by SHA."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from prometheus_client import Histogram
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from . import _keys
from ._observability.metrics import store_round_trip_seconds

RedisClient = Redis | RedisCluster


@dataclass(frozen=True, slots=True)
class LuaScript:
    name: str
    source: str
    sha: str
    # The script builds some of its keys in Lua: on a Redis Cluster it is given
    # _keys.slot_guard(KEYS[1]) as one more, last key, so it never runs while
    # its slot migrates (see slot_guard).
    derives_keys: bool = False
    _timer: Histogram = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Labelled once: a child lookup per call would cost more than the timing.
        object.__setattr__(self, "_timer", store_round_trip_seconds.labels(self.name))

    @classmethod
    def load(
        cls, name: str, *, libraries: tuple[str, ...] = (), derives_keys: bool = False
    ) -> LuaScript:
        """scripts/<name>.lua, after the local functions of scripts/lib/<library>.lua.

        A shebang line, if the script has one, stays first.
        """
        scripts = resources.files(__package__).joinpath("scripts")
        source = scripts.joinpath(f"{name}.lua").read_text()
        if libraries:
            shebang = ""
            if source.startswith("#!"):
                shebang, _, source = source.partition("\n")
                shebang += "\n"
            prelude = "".join(
                scripts.joinpath("lib", f"{lib}.lua").read_text() for lib in libraries
            )
            source = shebang + prelude + source
        sha = hashlib.sha1(source.encode()).hexdigest()
        return cls(name=name, source=source, sha=sha, derives_keys=derives_keys)

    async def run(self, redis: RedisClient, keys: list[str], args: list[Any]) -> Any:
        if self.derives_keys and isinstance(redis, RedisCluster):
            keys = [*keys, _keys.slot_guard(keys[0])]
        # EVALSHA keeps the script body off the wire; a restarted or failed-over
        # Redis has lost its script cache, and EVAL both runs and re-caches it.
        # One observation per round trip (packetbus_store_round_trip_seconds, the
        # script's name its label), a failed one too: a slow store shows either way.
        timer = self._timer
        started = time.perf_counter()
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            timer.observe(time.perf_counter() - started)
            started = time.perf_counter()
            return await redis.eval(self.source, len(keys), *keys, *args)
        finally:
            timer.observe(time.perf_counter() - started)


DISPATCH = LuaScript.load("dispatch", libraries=("retention", "log", "records"))
FOLLOW = LuaScript.load("follow", libraries=("batches",))
GET_PACKET = LuaScript.load("get_packet", libraries=("records",))
RECORD_GET = LuaScript.load("record_get", libraries=("records",))
REGISTER_AGENT_KEY = LuaScript.load("register_agent_key")
GROUP_CREATE = LuaScript.load("group_create")
GROUP_DELETE = LuaScript.load("group_delete")
GROUP_PULL = LuaScript.load("group_pull", libraries=("batches",))
SETTLE = LuaScript.load("settle", libraries=("hops", "batches"))
HOPS_APPEND = LuaScript.load("hops_append", libraries=("hops",))
CARCEL_REQUEUE = LuaScript.load("carcel_requeue", libraries=("hops", "batches"), derives_keys=True)
TASK_POST = LuaScript.load("task_post", libraries=("hops", "fields", "tasks", "order"))
TASK_CLAIM = LuaScript.load("task_claim", libraries=("hops", "fields", "tasks"), derives_keys=True)
TASK_SETTLE = LuaScript.load(
    "task_settle", libraries=("hops", "fields", "tasks"), derives_keys=True
)
TASK_REQUEUE = LuaScript.load(
    "task_requeue", libraries=("hops", "fields", "tasks"), derives_keys=True
)
TASK_EXPIRE = LuaScript.load(
    "task_expire", libraries=("hops", "fields", "tasks"), derives_keys=True
)
TASK_HELD = LuaScript.load("task_held", derives_keys=True)
# Read-only; the /metrics scrape runs the same file with a blocking client.
QUEUE_COUNTS = LuaScript.load("queue_counts", derives_keys=True)
AGENT_REGISTER = LuaScript.load("agent_register", libraries=("fields", "agents"), derives_keys=True)
AGENT_HEARTBEAT = LuaScript.load(
    "agent_heartbeat", libraries=("fields", "agents"), derives_keys=True
)
AGENT_DEREGISTER = LuaScript.load(
    "agent_deregister", libraries=("fields", "agents"), derives_keys=True
)
AGENT_REAP = LuaScript.load("agent_reap", libraries=("fields", "agents"), derives_keys=True)
AGENT_CLAIMED = LuaScript.load("agent_claimed")
AGENT_RELEASED = LuaScript.load("agent_released")
FINDING_POST = LuaScript.load("finding_post", libraries=("hops",))
POLICY_DECIDE = LuaScript.load("policy_decide", libraries=("fields", "records"))
POLICY_APPROVE = LuaScript.load(
    "policy_approve", libraries=("fields", "retention", "log", "records")
)
TOPIC_RETENTION_SET = LuaScript.load("topic_retention_set", libraries=("fields", "retention"))
TOPIC_RETENTION_ACKED = LuaScript.load("topic_retention_acked", libraries=("retention",))
TOPIC_SUMMARY = LuaScript.load("topic_summary")
POLICY_DENY = LuaScript.load("policy_deny", libraries=("fields", "records"))
CONTEXT_COMMIT = LuaScript.load("context_commit", libraries=("hops",), derives_keys=True)
CONTEXT_DELETE = LuaScript.load("context_delete", libraries=("hops",), derives_keys=True)
CONTEXT_MAP_SET = LuaScript.load("context_map_set")
CONTEXT_LOG_APPEND = LuaScript.load("context_log_append")
RECORD_PUT = LuaScript.load("record_put", libraries=("hops", "order"))
