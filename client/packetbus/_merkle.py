"""RFC 9162 Merkle tree hashes and inclusion proofs (section 2.1), for batch signatures."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """The tree level by level, leaves first, root last.

    Built bottom-up, an odd last node moving up unpaired: the same tree as
    RFC 9162's recursive definition (left subtree = the largest power of two).
    Leaf i sits at index i >> d on level d (a promoted node keeps that rule), so
    its sibling there is (i >> d) ^ 1, when the level has one.
    """
    if not leaves:
        raise ValueError("a Merkle tree needs at least one leaf")
    levels = [list(leaves)]
    # node_hash inlined: a tree of n leaves is n - 1 node hashes, for every signed
    # batch (ingest, delivery and ack hops) and every stored batch a reader expands.
    sha256 = hashlib.sha256
    while len(levels[-1]) > 1:
        level = levels[-1]
        up = [
            sha256(b"\x01" + left + right).digest()
            for left, right in zip(level[0::2], level[1::2], strict=False)
        ]
        if len(level) % 2:
            up.append(level[-1])
        levels.append(up)
    return levels


def root(leaves: Sequence[bytes]) -> bytes:
    """The tree hash of `leaves` (leaf hashes), without the audit paths."""
    return _levels(leaves)[-1][0]


def root_and_proofs(leaves: Sequence[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """The tree hash of `leaves` (leaf hashes) and every leaf's audit path, bottom-up."""
    levels = _levels(leaves)
    below = levels[:-1]
    paths = [
        [level[(i >> d) ^ 1] for d, level in enumerate(below) if (i >> d) ^ 1 < len(level)]
        for i in range(len(leaves))
    ]
    return levels[-1][0], paths


def root_and_joined_proofs(leaves: Sequence[bytes], prefix: bytes) -> tuple[bytes, list[bytes]]:
    """As `root_and_proofs`, with each audit path given as one string: every
    sibling preceded by `prefix` (its serialized field tag and length), bottom-up.

    A node's path is its sibling then its parent's path, so the paths are built
    top-down, two concatenations per node instead of one list per leaf and level:
    this runs for every signed batch at ingest.
    """
    levels = _levels(leaves)
    paths = [b""]
    for level in reversed(levels[:-1]):
        below: list[bytes] = []
        for k in range(0, len(level) - 1, 2):
            up = paths[k >> 1]
            below += (prefix + level[k + 1] + up, prefix + level[k] + up)
        if len(level) % 2:
            below.append(paths[-1])
        paths = below
    return levels[-1][0], paths


def root_from_proof(leaf: bytes, index: int, count: int, path: Sequence[bytes]) -> bytes | None:
    """The root `path` proves `leaf` (at `index` of `count`) into, or None if it cannot."""
    if not 0 <= index < count:
        return None
    fn, sn, r = index, count - 1, leaf
    for sibling in path:
        if sn == 0 or len(sibling) != 32:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(sibling, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, sibling)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None
