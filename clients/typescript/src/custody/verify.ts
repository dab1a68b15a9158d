/**
 * Offline chain-of-custody verification (CUSTODY.md section 4): only the packet's exact content
 * bytes, its entries, its head and trusted public keys; no server is asked anything.
 */
import { equals } from "@bufbuild/protobuf";

import {
  type CustodyEntry,
  type CustodyHead,
  type CustodyHeadStatement,
  CustodyHeadStatementSchema,
  type CustodyRecord,
  CustodyRecordSchema,
  CustodyVerdict,
  KeyOwnerKind,
  type SigningKey,
} from "../gen/packetbus/v1/custody_pb.js";
import { PacketSchema } from "../gen/packetbus/v1/packet_pb.js";
import type { StoredPacket } from "../gen/packetbus/v1/packet_service_pb.js";
import { BATCH_DOMAIN, ENTRY_DOMAIN, HEAD_DOMAIN, concatBytes } from "./domains.js";
import { verifyStrict } from "./ed25519.js";
import { leafHash, rootFromProof, sha256 } from "./merkle.js";
import { parseSigned } from "./parse.js";

/** A verdict's short name: "OK", "BAD_SIGNATURE", ... (CustodyVerdict without its prefix). */
export type VerdictName = keyof typeof CustodyVerdict;

/** What the verifier concluded about entry `index` of a chain. */
export interface EntryReport {
  readonly index: number;
  readonly verdict: CustodyVerdict;
  /** The verdict's short name, e.g. "BROKEN_LINK". */
  readonly name: VerdictName;
  /** Why, in words. */
  readonly detail: string;
  /** The entry's key id, as the entry names it. */
  readonly keyId: string;
  /** From the signed record, once its signature verified and it parsed; else undefined. */
  readonly record?: CustodyRecord;
}

/** What the verifier concluded about a chain. */
export interface ChainReport {
  /** True only with at least one entry, every entry OK and the head OK. */
  readonly verified: boolean;
  readonly entries: readonly EntryReport[];
  /** The head's verdict; UNSPECIFIED when there is no head. */
  readonly head: CustodyVerdict;
  readonly headName: VerdictName;
  readonly headDetail: string;
}

/** Trusted keys: a list (e.g. GetSigningKeys' `keys`) or a map by key id. */
export type TrustedKeys = Iterable<SigningKey> | ReadonlyMap<string, SigningKey>;

/** What verifyChain needs: the packet's tracking id, exact content bytes, entries and head. */
export interface ChainInput {
  readonly trackingId: string;
  readonly content: Uint8Array;
  readonly chain: readonly CustodyEntry[];
  readonly head?: CustodyHead | undefined;
  readonly keys: TrustedKeys;
}

/** The short name of a verdict number ("OK", ...). */
export function verdictName(verdict: CustodyVerdict): VerdictName {
  return CustodyVerdict[verdict] as VerdictName;
}

/** SHA-256(0x00 || record): what the next entry's previous_hash must be (1.4). */
export function entryHash(entry: CustodyEntry): Uint8Array {
  return leafHash(entry.record);
}

function keyMap(keys: TrustedKeys): ReadonlyMap<string, SigningKey> {
  if (keys instanceof Map) {
    return keys as ReadonlyMap<string, SigningKey>;
  }
  const byId = new Map<string, SigningKey>();
  for (const key of keys as Iterable<SigningKey>) {
    byId.set(key.keyId, key);
  }
  return byId;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}

/** Whether the entry's signature (alone, or over its batch's root) verifies with `publicKey`. */
export function entrySignatureOk(entry: CustodyEntry, publicKey: Uint8Array): boolean {
  const proof = entry.batchProof;
  if (proof === undefined) {
    return verifyStrict(publicKey, concatBytes(ENTRY_DOMAIN, entry.record), entry.signature);
  }
  const root = rootFromProof(leafHash(entry.record), proof.leafIndex, proof.leafCount, proof.siblingHashes);
  return root !== undefined && verifyStrict(publicKey, concatBytes(BATCH_DOMAIN, root), entry.signature);
}

/**
 * Judge entry `index` on its own, checks in the spec's order (4, steps 1-8): UNKNOWN_KEY,
 * BAD_SIGNATURE, MALFORMED, ACTOR_MISMATCH, OUT_OF_ORDER, BROKEN_LINK, CONTENT_DIGEST_MISMATCH,
 * else OK. `previousHash` is the previous entry's hash, empty for entry 0.
 */
export function verifyEntry(
  index: number,
  entry: CustodyEntry,
  context: {
    readonly trackingId: string;
    readonly contentDigest: Uint8Array;
    readonly previousHash: Uint8Array;
    readonly keys: ReadonlyMap<string, SigningKey>;
  },
): EntryReport {
  const report = (verdict: CustodyVerdict, detail: string, record?: CustodyRecord): EntryReport => ({
    index,
    verdict,
    name: verdictName(verdict),
    detail,
    keyId: entry.keyId,
    ...(record === undefined ? {} : { record }),
  });
  const key = context.keys.get(entry.keyId);
  if (key === undefined) {
    return report(CustodyVerdict.UNKNOWN_KEY, `no trusted key has id ${JSON.stringify(entry.keyId)}`);
  }
  // Nothing of the record is read before its signature verifies.
  if (!entrySignatureOk(entry, key.publicKey)) {
    return report(CustodyVerdict.BAD_SIGNATURE, `the signature does not verify with key ${entry.keyId}`);
  }
  const record = parseSigned(CustodyRecordSchema, entry.record);
  if (record === undefined) {
    return report(CustodyVerdict.MALFORMED, "the signed record does not parse");
  }
  if (record.keyId !== entry.keyId || record.trackingId !== context.trackingId) {
    return report(CustodyVerdict.MALFORMED, "the signed record names another key or packet", record);
  }
  if (key.owner !== record.actor) {
    return report(
      CustodyVerdict.ACTOR_MISMATCH,
      `key ${entry.keyId} belongs to ${JSON.stringify(key.owner)}, ` +
        `not to actor ${JSON.stringify(record.actor)}`,
      record,
    );
  }
  if (record.sequence !== BigInt(index)) {
    return report(CustodyVerdict.OUT_OF_ORDER, `sequence ${record.sequence} at position ${index}`, record);
  }
  if (!sameBytes(record.previousHash, context.previousHash)) {
    return report(CustodyVerdict.BROKEN_LINK, "previous_hash is not the hash of the entry before", record);
  }
  if (!sameBytes(record.contentDigest, context.contentDigest)) {
    return report(CustodyVerdict.CONTENT_DIGEST_MISMATCH, "the content is not what the entry signed", record);
  }
  return report(CustodyVerdict.OK, "ok", record);
}

/**
 * Judge a chain head (4): UNKNOWN_KEY, ACTOR_MISMATCH, BAD_SIGNATURE, MALFORMED,
 * CONTENT_DIGEST_MISMATCH, INCOMPLETE, else OK; with the reason in words.
 */
export function verifyHead(
  head: CustodyHead,
  context: {
    readonly trackingId: string;
    readonly contentDigest: Uint8Array;
    readonly chain: readonly CustodyEntry[];
    readonly keys: ReadonlyMap<string, SigningKey>;
  },
): [CustodyVerdict, string] {
  const key = context.keys.get(head.keyId);
  if (key === undefined) {
    return [CustodyVerdict.UNKNOWN_KEY, `no trusted key has id ${JSON.stringify(head.keyId)}`];
  }
  if (key.ownerKind !== KeyOwnerKind.SERVER) {
    return [CustodyVerdict.ACTOR_MISMATCH, "heads are signed by servers only"];
  }
  if (!verifyStrict(key.publicKey, concatBytes(HEAD_DOMAIN, head.statement), head.signature)) {
    return [CustodyVerdict.BAD_SIGNATURE, "the head's signature does not verify"];
  }
  const statement: CustodyHeadStatement | undefined = parseSigned(CustodyHeadStatementSchema, head.statement);
  if (statement === undefined) {
    return [CustodyVerdict.MALFORMED, "the head's statement does not parse"];
  }
  if (statement.trackingId !== context.trackingId || statement.keyId !== head.keyId) {
    return [CustodyVerdict.MALFORMED, "the head names another key or packet"];
  }
  if (!sameBytes(statement.contentDigest, context.contentDigest)) {
    return [CustodyVerdict.CONTENT_DIGEST_MISMATCH, "the content is not what the head signed"];
  }
  const last = context.chain.at(-1);
  const lastHash = last === undefined ? new Uint8Array(0) : entryHash(last);
  if (statement.length !== BigInt(context.chain.length) || !sameBytes(statement.lastEntryHash, lastHash)) {
    return [
      CustodyVerdict.INCOMPLETE,
      `the head vouches for ${statement.length} entries ending in another entry; ` +
        `the chain has ${context.chain.length}`,
    ];
  }
  return [CustodyVerdict.OK, "ok"];
}

/**
 * Verify a whole chain offline: a report per entry, the head's verdict, and `verified`. Never
 * throws on bad input.
 */
export function verifyChain(input: ChainInput): ChainReport {
  const keys = keyMap(input.keys);
  const contentDigest = sha256(input.content);
  const entries = input.chain.map((entry, index) =>
    verifyEntry(index, entry, {
      trackingId: input.trackingId,
      contentDigest,
      // Taken from the entry as given, whatever its own verdict (4).
      previousHash: index === 0 ? new Uint8Array(0) : entryHash(input.chain[index - 1]!),
      keys,
    }),
  );
  const [head, headDetail] =
    input.head === undefined
      ? [CustodyVerdict.UNSPECIFIED, "no head"]
      : verifyHead(input.head, { trackingId: input.trackingId, contentDigest, chain: input.chain, keys });
  return {
    verified:
      entries.length > 0 &&
      entries.every((entry) => entry.verdict === CustodyVerdict.OK) &&
      head === CustodyVerdict.OK,
    entries,
    head,
    headName: verdictName(head),
    headDetail,
  };
}

/** A ChainReport for a stored packet, plus whether its readable fields say what was signed. */
export interface StoredPacketReport extends ChainReport {
  /** The content bytes parse as a Packet equal to `packet` without its chain (4.1 step 3). */
  readonly contentMatchesPacket: boolean;
}

/**
 * Verify a StoredPacket as GetPacket returns it (or an export line decodes to) offline: its
 * `content`, `packet.trackingId`, `packet.chainOfCustody` and `custodyHead`. `verified` also
 * requires `contentMatchesPacket`. Never throws on bad input.
 */
export function verifyStoredPacket(stored: StoredPacket, keys: TrustedKeys): StoredPacketReport {
  const packet = stored.packet;
  const chainReport = verifyChain({
    trackingId: packet?.trackingId ?? "",
    content: stored.content,
    chain: packet?.chainOfCustody ?? [],
    head: stored.custodyHead,
    keys,
  });
  const signed = parseSigned(PacketSchema, stored.content);
  const readable = packet === undefined ? undefined : { ...packet, chainOfCustody: [] };
  const contentMatchesPacket =
    signed !== undefined && readable !== undefined && equals(PacketSchema, signed, readable);
  return { ...chainReport, verified: chainReport.verified && contentMatchesPacket, contentMatchesPacket };
}
