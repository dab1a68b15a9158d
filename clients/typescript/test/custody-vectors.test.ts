/**
 * Every vector of protos/packetbus/v1/custody_test_vectors.json (made by the Python
 * implementation) against the TypeScript custody code: serialization bytes, digests, Merkle
 * proofs, signatures, key ids and chain verdicts. The file is iterated, not sampled: a section
 * this test does not know fails it, and the count of vectors checked must be the file's.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { create, fromBinary, fromJson, type JsonValue } from "@bufbuild/protobuf";

import {
  AGENT_KEY_DOMAIN,
  BATCH_DOMAIN,
  CustodyEntrySchema,
  CustodyHeadSchema,
  CustodyHeadStatementSchema,
  CustodyRecordSchema,
  ENTRY_DOMAIN,
  HEAD_DOMAIN,
  KeyOwnerKind,
  PacketSchema,
  SMALL_ORDER_POINTS,
  type SigningKey,
  SigningKeySchema,
  agentKeyMessage,
  agentKeyProof,
  auditPath,
  canonicalBytes,
  contentBytes,
  entryHash,
  isSmallOrder,
  keyIdFor,
  leafHash,
  merkleRoot,
  parseExportLine,
  privateKeyFromSeed,
  rawPublicKey,
  rootFromProof,
  sha256,
  signEd25519,
  signPacket,
  verdictName,
  verifyChain,
  verifyStoredPacket,
  verifyStrict,
} from "../src/index.js";

const FILE = fileURLToPath(
  new URL("../../../../protos/packetbus/v1/custody_test_vectors.json", import.meta.url),
);
// The file's JSON is untyped by nature; each use below names the fields the spec gives it.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Any = any;
const V: Any = JSON.parse(readFileSync(FILE, "utf8"));

const hex = (bytes: Uint8Array): string => Buffer.from(bytes).toString("hex");
const bin = (text: string): Uint8Array => new Uint8Array(Buffer.from(text, "hex"));

const KNOWN_SECTIONS = [
  "about",
  "agent_key_registration",
  "canonical_serialization",
  "chains",
  "domains",
  "ed25519",
  "export",
  "keys",
  "merkle",
  "sealed_batch",
  "seeds",
  "signed_packet",
  "small_order_points",
  "t0_ns",
  "version",
  "walkthroughs",
];

/** The number of vectors in the file, counted from its structure alone. */
function fileCount(): number {
  const walkthroughs = Object.values(V.walkthroughs as Record<string, Any>);
  return (
    V.canonical_serialization.length +
    V.chains.length +
    V.ed25519.length +
    V.merkle.trees.length +
    V.merkle.bad_proofs.length +
    Object.keys(V.keys).length +
    Object.keys(V.domains).length +
    V.small_order_points.length +
    walkthroughs.reduce((total: number, w: Any) => total + w.entries.length + 1, 0) +
    1 + // signed_packet
    1 + // agent_key_registration
    1 + // export
    1 // sealed_batch
  );
}

let checked = 0;

const keysByName = new Map<string, SigningKey>();
for (const [name, fields] of Object.entries(V.keys as Record<string, Any>)) {
  keysByName.set(name, fromBinary(SigningKeySchema, bin(fields.serialized)));
}
const serverKey = keysByName.get("server")!;

function timestampMs(ts: { seconds: number; nanos?: number }): number {
  return ts.seconds * 1000 + (ts.nanos ?? 0) / 1e6;
}

/** A CustodyRecord built from the vectors' `record_fields`. */
function recordFromFields(f: Any) {
  return create(CustodyRecordSchema, {
    sequence: BigInt(f.sequence ?? 0),
    actor: f.actor ?? "",
    action: f.action ?? "",
    occurredAt: { seconds: BigInt(f.occurred_at.seconds), nanos: f.occurred_at.nanos ?? 0 },
    contentDigest: bin(f.content_digest ?? ""),
    previousHash: bin(f.previous_hash ?? ""),
    keyId: f.key_id ?? "",
    trackingId: f.tracking_id ?? "",
    counterpart: f.counterpart ?? "",
    attempt: f.attempt ?? 0,
    reason: f.reason ?? "",
    principal: f.principal ?? "",
  });
}

/** The seed of the key whose id is `keyId`, if the file gives it. */
function seedOf(keyId: string): Uint8Array | undefined {
  for (const [name, seed] of Object.entries(V.seeds as Record<string, string>)) {
    if (keysByName.get(name)?.keyId === keyId) {
      return bin(seed);
    }
  }
  return undefined;
}

test("the file has only sections this test checks", () => {
  assert.deepEqual(Object.keys(V).sort(), KNOWN_SECTIONS);
  assert.equal(V.version, 1);
});

test("canonical_serialization: every message serializes to the exact bytes", () => {
  for (const vector of V.canonical_serialization) {
    assert.equal(vector.message, "packetbus.v1.Packet", vector.name);
    const packet =
      vector.input_bytes !== undefined
        ? fromBinary(PacketSchema, bin(vector.input_bytes))
        : fromJson(PacketSchema, vector.json as JsonValue);
    assert.equal(hex(canonicalBytes(PacketSchema, packet)), vector.bytes, vector.name);
    checked++;
  }
});

test("domains: each prefix is the spec's", () => {
  const ours: Record<string, Uint8Array> = {
    agent_key: AGENT_KEY_DOMAIN,
    batch: BATCH_DOMAIN,
    entry: ENTRY_DOMAIN,
    head: HEAD_DOMAIN,
  };
  for (const [name, value] of Object.entries(V.domains as Record<string, string>)) {
    assert.ok(ours[name] !== undefined, name);
    assert.equal(hex(ours[name]), value, name);
    checked++;
  }
});

test("keys: key ids derive from the public key, and the SigningKey bytes are canonical", () => {
  for (const [name, fields] of Object.entries(V.keys as Record<string, Any>)) {
    const key = keysByName.get(name)!;
    assert.equal(hex(key.publicKey), fields.public_key, name);
    assert.equal(key.keyId, fields.key_id, name);
    assert.equal(keyIdFor(key.publicKey), fields.key_id, name);
    assert.equal(key.keyId.length, 40, name);
    assert.equal(key.owner, fields.owner, name);
    assert.equal(`KEY_OWNER_KIND_${KeyOwnerKind[key.ownerKind]}`, fields.owner_kind, name);
    assert.equal(hex(canonicalBytes(SigningKeySchema, key)), fields.serialized, name);
    const seed = V.seeds[name];
    if (seed !== undefined) {
      assert.equal(hex(rawPublicKey(privateKeyFromSeed(bin(seed)))), fields.public_key, name);
    }
    checked++;
  }
});

test("small_order_points: the list is the spec's, and each is refused with either sign bit", () => {
  assert.deepEqual(V.small_order_points, SMALL_ORDER_POINTS);
  for (const point of V.small_order_points as string[]) {
    const bytes = bin(point);
    assert.ok(isSmallOrder(bytes), point);
    bytes[31]! |= 0x80;
    assert.ok(isSmallOrder(bytes), `${point} with the sign bit`);
    checked++;
  }
});

test("ed25519: strict verification gives each vector's verdict", () => {
  for (const vector of V.ed25519) {
    const publicKey = bin(vector.public_key);
    const message = bin(vector.message);
    const signature = bin(vector.signature);
    assert.equal(verifyStrict(publicKey, message, signature), vector.valid, vector.name);
    const seed = seedOf(keyIdFor(publicKey));
    if (vector.valid && seed !== undefined) {
      assert.equal(hex(signEd25519(privateKeyFromSeed(seed), message)), vector.signature, vector.name);
    }
    checked++;
  }
});

test("merkle.trees: leaf hashes, roots and every audit path", () => {
  for (const tree of V.merkle.trees) {
    const leaves = (tree.leaf_data as string[]).map((data) => leafHash(bin(data)));
    assert.deepEqual(leaves.map(hex), tree.leaf_hashes);
    assert.equal(hex(merkleRoot(leaves)), tree.root);
    assert.equal(tree.proofs.length, leaves.length);
    (tree.proofs as string[][]).forEach((proof, i) => {
      assert.deepEqual(auditPath(leaves, i).map(hex), proof, `leaf ${i} of ${leaves.length}`);
      const root = rootFromProof(leaves[i]!, BigInt(i), BigInt(leaves.length), proof.map(bin));
      assert.equal(root === undefined ? "none" : hex(root), tree.root, `leaf ${i} of ${leaves.length}`);
    });
    checked++;
  }
});

test("merkle.bad_proofs: each yields no root", () => {
  for (const bad of V.merkle.bad_proofs) {
    const path = (bad.path as string[]).map(bin);
    const root = rootFromProof(bin(bad.leaf), BigInt(bad.index), BigInt(bad.count), path);
    assert.equal(root, undefined, bad.name);
    checked++;
  }
});

test("chains: every entry's verdict, the head's and the chain's", () => {
  for (const chain of V.chains) {
    const report = verifyChain({
      trackingId: chain.tracking_id,
      content: bin(chain.content),
      chain: (chain.entries as string[]).map((entry) => fromBinary(CustodyEntrySchema, bin(entry))),
      head: chain.head === null ? undefined : fromBinary(CustodyHeadSchema, bin(chain.head)),
      keys: (chain.keys as string[]).map((name) => keysByName.get(name)!),
    });
    assert.deepEqual(
      report.entries.map((entry) => entry.name),
      chain.expected.entries,
      chain.name,
    );
    assert.equal(report.headName, chain.expected.head, chain.name);
    assert.equal(verdictName(report.head), chain.expected.head, chain.name);
    assert.equal(report.verified, chain.expected.verified, chain.name);
    checked++;
  }
});

test("walkthroughs: each intermediate value of the two valid chains", () => {
  for (const [name, walk] of Object.entries(V.walkthroughs as Record<string, Any>)) {
    const content = bin(walk.content);
    assert.equal(hex(sha256(content)), walk.content_digest, name);
    let previous = "";
    for (const [i, step] of (walk.entries as Any[]).entries()) {
      const where = `${name} entry ${i}`;
      const entry = fromBinary(CustodyEntrySchema, bin(step.entry));
      assert.equal(hex(canonicalBytes(CustodyEntrySchema, entry)), step.entry, where);
      assert.equal(hex(entry.record), step.record, where);
      assert.equal(hex(entry.signature), step.signature, where);
      assert.equal(entry.keyId, step.key_id, where);
      const rebuilt = canonicalBytes(CustodyRecordSchema, recordFromFields(step.record_fields));
      assert.equal(hex(rebuilt), step.record, where);
      assert.equal(hex(entryHash(entry)), step.entry_hash, where);
      assert.equal(step.previous_hash_expected, previous, where);
      assert.equal(step.record_fields.previous_hash ?? "", previous, where);
      let signed: Uint8Array;
      if (step.batch_proof === undefined) {
        assert.equal(entry.batchProof, undefined, where);
        signed = Uint8Array.from([...ENTRY_DOMAIN, ...entry.record]);
      } else {
        const proof = entry.batchProof!;
        assert.equal(proof.leafIndex, BigInt(step.batch_proof.leaf_index ?? 0), where);
        assert.equal(proof.leafCount, BigInt(step.batch_proof.leaf_count), where);
        assert.deepEqual(proof.siblingHashes.map(hex), step.batch_proof.sibling_hashes ?? [], where);
        const leaf = leafHash(entry.record);
        const root = rootFromProof(leaf, proof.leafIndex, proof.leafCount, proof.siblingHashes);
        assert.equal(root === undefined ? "none" : hex(root), step.merkle_root, where);
        signed = Uint8Array.from([...BATCH_DOMAIN, ...root!]);
      }
      assert.equal(hex(signed), step.signed_message, where);
      const key = [...keysByName.values()].find((k) => k.keyId === entry.keyId)!;
      assert.ok(verifyStrict(key.publicKey, signed, entry.signature), where);
      assert.equal(hex(signEd25519(privateKeyFromSeed(seedOf(entry.keyId)!), signed)), step.signature, where);
      previous = step.entry_hash;
      checked++;
    }
    const head = walk.head;
    const parsed = fromBinary(CustodyHeadSchema, bin(head.head));
    assert.equal(hex(parsed.statement), head.statement, name);
    assert.equal(hex(parsed.signature), head.signature, name);
    assert.equal(parsed.keyId, head.key_id, name);
    const f = head.statement_fields;
    const statement = create(CustodyHeadStatementSchema, {
      trackingId: f.tracking_id,
      length: BigInt(f.length),
      lastEntryHash: bin(f.last_entry_hash),
      contentDigest: bin(f.content_digest),
      issuedAt: { seconds: BigInt(f.issued_at.seconds), nanos: f.issued_at.nanos ?? 0 },
      keyId: f.key_id,
    });
    assert.equal(hex(canonicalBytes(CustodyHeadStatementSchema, statement)), head.statement, name);
    assert.equal(f.last_entry_hash, previous, name);
    const signed = Uint8Array.from([...HEAD_DOMAIN, ...parsed.statement]);
    assert.equal(hex(signed), head.signed_message, name);
    assert.ok(verifyStrict(serverKey.publicKey, signed, parsed.signature), name);
    assert.equal(hex(signEd25519(privateKeyFromSeed(seedOf(head.key_id)!), signed)), head.signature, name);
    checked++;
  }
});

test("signed_packet: a 1.1 packet signed in TypeScript is the Python one, byte for byte", () => {
  const vector = V.signed_packet;
  const packet = fromJson(PacketSchema, vector.content_json as JsonValue);
  assert.equal(hex(contentBytes(packet)), vector.content);
  assert.equal(hex(sha256(bin(vector.content))), vector.content_digest);
  const privateKey = privateKeyFromSeed(bin(V.seeds[vector.agent_id]));
  const signed = signPacket(packet, privateKey, { nowMs: timestampMs(vector.record_fields.occurred_at) });
  const entry = signed.chainOfCustody[0]!;
  assert.equal(signed.chainOfCustody.length, 1);
  assert.equal(hex(entry.record), vector.record);
  const rebuilt = canonicalBytes(CustodyRecordSchema, recordFromFields(vector.record_fields));
  assert.equal(hex(rebuilt), vector.record);
  assert.equal(entry.keyId, vector.key_id);
  assert.equal(hex(Uint8Array.from([...ENTRY_DOMAIN, ...entry.record])), vector.signed_message);
  assert.equal(hex(entry.signature), vector.signature);
  assert.equal(hex(canonicalBytes(CustodyEntrySchema, entry)), vector.entry);
  assert.equal(hex(canonicalBytes(PacketSchema, signed)), vector.packet);
  assert.equal(hex(contentBytes(signed)), vector.content);
  checked++;
});

test("agent_key_registration: the message and the proof of possession", () => {
  const vector = V.agent_key_registration;
  const publicKey = bin(vector.public_key);
  assert.equal(hex(agentKeyMessage(vector.agent_id, publicKey)), vector.message);
  const privateKey = privateKeyFromSeed(bin(V.seeds[vector.agent_id]));
  assert.equal(hex(rawPublicKey(privateKey)), vector.public_key);
  assert.equal(hex(agentKeyProof(vector.agent_id, privateKey)), vector.proof);
  assert.ok(verifyStrict(publicKey, bin(vector.message), bin(vector.proof)));
  checked++;
});

test("export: the keys line and the packet line verify", () => {
  const lines = (V.export.lines as string[]).map(parseExportLine);
  let keys: SigningKey[] = [];
  let packets = 0;
  let verified = 0;
  for (const line of lines) {
    if (line.kind === "keys") {
      keys = line.keys;
    } else if (line.kind === "packet" || line.kind === "carcel") {
      packets++;
      const report = verifyStoredPacket(line.packet, keys);
      assert.ok(report.contentMatchesPacket);
      verified += report.verified ? 1 : 0;
    }
  }
  assert.equal(keys.length, 3);
  assert.deepEqual(
    { ok: packets === verified, packets, verified },
    { ok: V.export.expected.ok, packets: V.export.expected.packets, verified: V.export.expected.verified },
  );
  checked++;
});

test("sealed_batch (informative): its signature and leaves are those of the expanded entries", () => {
  const sealed = V.sealed_batch;
  const stored = bin(sealed.stored);
  assert.equal(stored[0], 1);
  const view = Buffer.from(stored);
  // Version byte, occurred_at (u64), then the u16 lengths of key id, actor and details.
  const [keyIdLength, actorLength, detailsLength] = [9, 11, 13].map((at) => view.readUInt16BE(at)) as [
    number,
    number,
    number,
  ];
  const signature = stored.subarray(15, 79);
  const leavesAt = 79 + keyIdLength + actorLength + detailsLength;
  assert.equal((stored.length - leavesAt) % 32, 0);
  const leaves: Uint8Array[] = [];
  for (let at = leavesAt; at < stored.length; at += 32) {
    leaves.push(stored.subarray(at, at + 32));
  }
  const batchMessage = Uint8Array.from([...BATCH_DOMAIN, ...merkleRoot(leaves)]);
  assert.ok(verifyStrict(serverKey.publicKey, batchMessage, signature));
  // The expanded form is the entries as chain_of_custody fields of a Packet.
  const entries = fromBinary(PacketSchema, bin(sealed.expanded)).chainOfCustody;
  assert.equal(entries.length, 2);
  entries.forEach((entry, i) => {
    assert.equal(hex(entry.signature), hex(signature));
    assert.equal(hex(leafHash(entry.record)), hex(leaves[sealed.leaf + i]!));
    assert.equal(entry.batchProof?.leafIndex, BigInt(sealed.leaf + i));
  });
  assert.equal(hex(fromBinary(CustodyRecordSchema, entries[0]!.record).previousHash), sealed.previous_hash);
  assert.equal(fromBinary(CustodyRecordSchema, entries[0]!.record).sequence, BigInt(sealed.sequence));
  checked++;
});

test("every vector in the file was checked", () => {
  assert.equal(checked, fileCount());
  assert.equal(checked, 6 + 4 + 5 + 7 + 8 + 6 + 4 + 16 + (4 + 1) * 2 + 4);
});
