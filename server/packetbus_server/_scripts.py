"""Lua scripts, each loaded from its own file under scripts/, run by SHA."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

RedisClient = Redis | RedisCluster


@dataclass(frozen=True, slots=True)
class LuaScript:
    name: str
    source: str
    sha: str

    @classmethod
    def load(cls, name: str, *, libraries: tuple[str, ...] = ()) -> LuaScript:
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
        return cls(name=name, source=source, sha=hashlib.sha1(source.encode()).hexdigest())

    async def run(self, redis: RedisClient, keys: list[str], args: list[Any]) -> Any:
        # EVALSHA keeps the script body off the wire; a restarted or failed-over
        # Redis has lost its script cache, and EVAL both runs and re-caches it.
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await redis.eval(self.source, len(keys), *keys, *args)


DISPATCH = LuaScript.load("dispatch", libraries=("log",))
FOLLOW = LuaScript.load("follow")
GET_PACKET = LuaScript.load("get_packet")
REGISTER_AGENT_KEY = LuaScript.load("register_agent_key")
GROUP_CREATE = LuaScript.load("group_create")
GROUP_DELETE = LuaScript.load("group_delete")
GROUP_PULL = LuaScript.load("group_pull")
SETTLE = LuaScript.load("settle", libraries=("hops",))
HOPS_APPEND = LuaScript.load("hops_append", libraries=("hops",))
CARCEL_REQUEUE = LuaScript.load("carcel_requeue", libraries=("hops",))
TASK_POST = LuaScript.load("task_post", libraries=("hops", "fields", "tasks"))
TASK_CLAIM = LuaScript.load("task_claim", libraries=("hops", "fields", "tasks"))
TASK_SETTLE = LuaScript.load("task_settle", libraries=("hops", "fields", "tasks"))
TASK_REQUEUE = LuaScript.load("task_requeue", libraries=("hops", "fields", "tasks"))
TASK_HELD = LuaScript.load("task_held")
AGENT_REGISTER = LuaScript.load("agent_register", libraries=("fields", "agents"))
AGENT_HEARTBEAT = LuaScript.load("agent_heartbeat", libraries=("fields", "agents"))
AGENT_DEREGISTER = LuaScript.load("agent_deregister", libraries=("fields", "agents"))
AGENT_REAP = LuaScript.load("agent_reap", libraries=("fields", "agents"))
AGENT_CLAIMED = LuaScript.load("agent_claimed")
AGENT_RELEASED = LuaScript.load("agent_released")
FINDING_POST = LuaScript.load("finding_post", libraries=("hops",))
POLICY_DECIDE = LuaScript.load("policy_decide", libraries=("fields",))
POLICY_APPROVE = LuaScript.load("policy_approve", libraries=("fields", "log"))
POLICY_DENY = LuaScript.load("policy_deny", libraries=("fields",))
CONTEXT_COMMIT = LuaScript.load("context_commit", libraries=("hops",))
CONTEXT_DELETE = LuaScript.load("context_delete", libraries=("hops",))
CONTEXT_MAP_SET = LuaScript.load("context_map_set")
CONTEXT_LOG_APPEND = LuaScript.load("context_log_append")
RECORD_PUT = LuaScript.load("record_put", libraries=("hops",))
