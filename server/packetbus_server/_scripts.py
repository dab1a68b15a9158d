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
    def load(cls, name: str) -> LuaScript:
        source = resources.files(__package__).joinpath("scripts", f"{name}.lua").read_text()
        return cls(name=name, source=source, sha=hashlib.sha1(source.encode()).hexdigest())

    async def run(self, redis: RedisClient, keys: list[str], args: list[Any]) -> Any:
        # EVALSHA keeps the script body off the wire; a restarted or failed-over
        # Redis has lost its script cache, and EVAL both runs and re-caches it.
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await redis.eval(self.source, len(keys), *keys, *args)


DISPATCH = LuaScript.load("dispatch")
GET_PACKET = LuaScript.load("get_packet")
REGISTER_AGENT_KEY = LuaScript.load("register_agent_key")
