/** RFC 9162 Merkle hashing for custody batches (CUSTODY.md 1.4 and 1.6). All hashes are 32-byte SHA-256. */
import { createHash } from "node:crypto";

/** SHA-256 of the concatenation of `parts`: 32 bytes. */
export function sha256(...parts: readonly Uint8Array[]): Uint8Array {
  const hash = createHash("sha256");
  for (const part of parts) {
    hash.update(part);
  }
  return new Uint8Array(hash.digest());
}

/** RFC 9162 leaf hash, SHA-256(0x00 || data); for a record it is also the entry hash (1.4). */
export function leafHash(data: Uint8Array): Uint8Array {
  return sha256(Uint8Array.of(0), data);
}

/** RFC 9162 interior node hash, SHA-256(0x01 || left || right). */
export function nodeHash(left: Uint8Array, right: Uint8Array): Uint8Array {
  return sha256(Uint8Array.of(1), left, right);
}

/**
 * MTH over leaf hashes, in order (RFC 9162 2.1.1). Throws RangeError for no leaves (the bus
 * never signs an empty batch).
 */
export function merkleRoot(leafHashes: readonly Uint8Array[]): Uint8Array {
  if (leafHashes.length === 0) {
    throw new RangeError("merkleRoot: no leaves");
  }
  if (leafHashes.length === 1) {
    return leafHashes[0]!;
  }
  let k = 1;
  while (k * 2 < leafHashes.length) {
    k *= 2;
  }
  return nodeHash(merkleRoot(leafHashes.slice(0, k)), merkleRoot(leafHashes.slice(k)));
}

/** The audit path of leaf `index` (sibling hashes from the leaf up), as carried in a BatchProof. */
export function auditPath(leafHashes: readonly Uint8Array[], index: number): Uint8Array[] {
  if (leafHashes.length <= 1) {
    return [];
  }
  let k = 1;
  while (k * 2 < leafHashes.length) {
    k *= 2;
  }
  return index < k
    ? [...auditPath(leafHashes.slice(0, k), index), merkleRoot(leafHashes.slice(k))]
    : [...auditPath(leafHashes.slice(k), index - k), merkleRoot(leafHashes.slice(0, k))];
}

/**
 * The root that leaf `leaf` at `index` of a tree of `count` leaves proves with `path` (RFC 9162
 * 2.1.3.2), or undefined when the proof is unusable: index >= count, a sibling not 32 bytes, or
 * a path longer or shorter than the tree needs.
 */
export function rootFromProof(
  leaf: Uint8Array,
  index: bigint,
  count: bigint,
  path: readonly Uint8Array[],
): Uint8Array | undefined {
  if (index >= count || leaf.length !== 32) {
    return undefined;
  }
  let fn = index;
  let sn = count - 1n;
  let root = leaf;
  for (const sibling of path) {
    if (sibling.length !== 32 || sn === 0n) {
      return undefined;
    }
    if ((fn & 1n) === 1n || fn === sn) {
      root = nodeHash(sibling, root);
      while ((fn & 1n) === 0n && fn !== 0n) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      root = nodeHash(root, sibling);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  return sn === 0n ? root : undefined;
}
