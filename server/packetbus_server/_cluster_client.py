"""The Redis Cluster client the store uses: redirects handled so a slot migration is invisible.

redis-py's asyncio ``RedisCluster`` follows MOVED and ASK itself, but three of
its ways break calls while a slot moves between nodes (seen with redis-py 8.1,
whose redirect loop is ``RedisCluster._execute_command``):

- On ASK it sends ASKING through ``ClusterNode.execute_command`` and then the
  command through a second ``execute_command``. Each takes whichever pooled
  connection is free first (the free list is first-in first-out), so whenever
  the node has more than one idle connection the command arrives on another
  connection than its ASKING. The importing node then answers MOVED back to the
  source, which answers ASK again, until the 16 redirects run out: "TTL
  exhausted.". ASKING is a flag of one connection for its next command only;
  here both go out on one connection in one write.
- The ASK target is looked up in the nodes cache and used unchecked: a node
  that serves no slot yet (the usual target when a cluster grows) is not in
  the cache, and the call dies with AttributeError on None. Here an unknown
  target is added to the cache, as redis-py does already for an unknown
  MOVED target.
- On CLUSTERDOWN, and on every fifth MOVED, it closes every connection of
  every node, including the ones other calls are reading from at that moment
  (a blocking XREAD of a subscription, a health PING). Here the slot map is
  refreshed before the next command instead, and nobody's connection is cut.

And one way stalls every call of a loaded server: after a connection error
(one lost reply) it marks the slot map stale, and the next command of every
call, on every node, waits for a refresh (CLUSTER SLOTS, then COMMAND, whose
reply is the whole command table) behind one lock. Behind a proxy that drops
5% of replies that was a refresh every half second, each taking up to 1 s on
a loaded 2-core machine, so calls spent their retry budgets waiting on it and
a claim could fail for its whole 30 s deadline. A refresh that ends in any
error, the cancellation of its caller's budget included, also closed every
connection of every node, those other calls were reading from too. Here a
refresh runs as one task of its own, in the background once a map is loaded
(commands use the map they have: a slot that did move answers MOVED, which is
followed; a node that is gone fails the call, which is retried); a failed one
closes nothing, and the command table is loaded once (it does not change with
the topology).

TRYAGAIN (a multi-key command or script whose keys are split between the two
nodes mid-migration) is not waited out here: it is raised at once, and the
store's own retry loop (``_retry.with_retries``) backs off within the call's
deadline, so there is one retry layer, not two.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.cluster import PRIMARY
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    ClusterError,
    ConnectionError,
    MaxConnectionsError,
    MovedError,
    SlotNotCoveredError,
    TimeoutError,
)

from ._key_types import KeyTypedErrors


class StoreCluster(KeyTypedErrors, RedisCluster):  # type: ignore[misc]  # redis-py's bases disagree
    """``RedisCluster`` with the redirect loop described in the module docstring.

    Errors raised: what the node answers (TryAgainError on TRYAGAIN,
    ClusterDownError, ResponseError...), ConnectionError/TimeoutError, and
    ClusterError("TTL exhausted.") after `RedisClusterRequestTTL` redirects.
    """

    # The refresh of the slot map under way or last made (see initialize).
    _refresh: asyncio.Task[None] | None = None

    async def _execute_command(self, target_node: ClusterNode, *args: Any, **kwargs: Any) -> Any:
        asking = False
        for _ in range(self.RedisClusterRequestTTL):
            try:
                if asking:
                    return await _asking(target_node, args, kwargs)
                return await target_node.execute_command(*args, **kwargs)
            except (MaxConnectionsError, BusyLoadingError):
                # This client's pool is full, or the node is loading its data:
                # the node is there (both are ConnectionErrors to redis-py).
                raise
            except (ConnectionError, TimeoutError):
                # The node may be gone (a failover): look the slots up again
                # before the next command. Idle connections to it go now.
                await target_node.disconnect_free_connections()
                self.nodes_manager.move_node_to_end_of_cached_nodes(target_node.name)
                self._initialize = True
                raise
            except (ClusterDownError, SlotNotCoveredError):
                self._initialize = True
                raise
            except MovedError as exc:
                # The slot has a new owner for good: note it, ask that one.
                await self.nodes_manager.move_slot(exc)
                self.reinitialize_counter += 1
                if (
                    self.reinitialize_steps
                    and self.reinitialize_counter % self.reinitialize_steps == 0
                ):
                    # Many moves: the whole map is probably stale; reload it
                    # before the next command (without closing connections).
                    self._initialize = True
                slot = await self._determine_slot(*args)
                target_node = self.nodes_manager.get_node_from_slot(slot)
                asking = False
            except AskError as exc:
                # The key is on its way to another node: ask that one, this once.
                target_node = self._ask_target(exc)
                asking = True
        raise ClusterError("TTL exhausted.")

    async def initialize(
        self,
        additional_startup_nodes_info: list[tuple[str, int]] | None = None,
        last_failed_node_name: str | None = None,
    ) -> StoreCluster:
        """Load the slot map (and, the first time, the command table) when it is stale.

        One refresh at a time, as a task of its own (see the module docstring). The
        first load is waited for: raises what it raised (RedisClusterException when
        no node answered, ConnectionError...) to every caller waiting, and the next
        call starts a new one; a caller that is cancelled stops waiting, the load
        goes on. Once a map is loaded, a refresh is started and not waited for.
        """
        if not self._initialize:
            return self
        refresh = self._refresh
        if refresh is None or refresh.done():
            refresh = asyncio.create_task(
                self._refresh_map(additional_startup_nodes_info, last_failed_node_name)
            )
            # Retrieved here: nobody may be waiting for it.
            refresh.add_done_callback(_retrieve)
            self._refresh = refresh
        if not self.commands_parser.commands:  # no map loaded yet
            await asyncio.shield(refresh)
        return self

    async def _refresh_map(
        self,
        additional_startup_nodes_info: list[tuple[str, int]] | None,
        last_failed_node_name: str | None,
    ) -> None:
        # redis-py's initialize without its "close every connection on failure":
        # connections to a node that is gone fail on their own, and the others
        # are in use by calls that would otherwise fail with them.
        await self.nodes_manager.initialize(
            additional_startup_nodes_info=additional_startup_nodes_info,
            last_failed_node_name=last_failed_node_name,
        )
        parser = self.commands_parser
        if parser.commands:
            parser.node = self.nodes_manager.default_node  # its COMMAND GETKEYS go here
        else:
            await parser.initialize(self.nodes_manager.default_node)
        self._initialize = False

    async def aclose(self) -> None:
        """Close every connection to every node.

        redis-py's aclose closes nothing while a reload of the slot map is
        pending, which the redirect loop above asks for after a failed node or
        CLUSTERDOWN: the connections opened before would outlive the server.
        A refresh under way is cancelled first.
        """
        refresh = self._refresh
        if refresh is not None and not refresh.done():
            refresh.cancel()
            await asyncio.wait([refresh])  # its outcome is no concern of the closing
        pending = self._initialize
        await super().aclose()
        if pending:
            await self.nodes_manager.aclose()
            await self.nodes_manager.aclose("startup_nodes")

    def _ask_target(self, exc: AskError) -> ClusterNode:
        manager = self.nodes_manager
        node = manager.get_node(host=exc.host, port=exc.port)
        if node is None:
            # A node with no slot yet is not in the cache built from CLUSTER SLOTS.
            node = ClusterNode(exc.host, exc.port, PRIMARY, **manager.connection_kwargs)
            manager.set_nodes(manager.nodes_cache, {node.name: node})
        return node


def _retrieve(refresh: asyncio.Task[None]) -> None:
    if not refresh.cancelled():
        refresh.exception()


async def _asking(node: ClusterNode, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """ASKING and the command on one connection of `node`, in one write; the command's reply."""
    asking = PipelineCommand(0, "ASKING")
    command = PipelineCommand(1, *args, **kwargs)
    await node.execute_pipeline([asking, command])
    for sent in (asking, command):
        if isinstance(sent.result, Exception):
            raise sent.result
    return command.result
