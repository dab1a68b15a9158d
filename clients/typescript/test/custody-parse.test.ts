/**
 * Signed bytes are read as Python's upb reads them, so the TypeScript verdict is Python's: a
 * known field with the wrong wire type is an unknown field (protobuf-es alone would read it as
 * the declared type), bad UTF-8 and truncation do not parse. The expected verdicts are what
 * client/packetbus/_custody.verify_entry gives for the same signed bytes (checked by hand with
 * the Python package; they are not in custody_test_vectors.json).
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { test } from "node:test";

import { create, fromBinary } from "@bufbuild/protobuf";

import {
  CustodyEntrySchema,
  CustodyRecordSchema,
  ENTRY_DOMAIN,
  canonicalBytes,
  keyIdFor,
  privateKeyFromSeed,
  rawPublicKey,
  signEd25519,
  verifyChain,
} from "../src/index.js";
import { KeyOwnerKind, SigningKeySchema } from "../src/index.js";

const createKey = (owner: string, key: Uint8Array) =>
  create(SigningKeySchema, { keyId: keyIdFor(key), publicKey: key, owner, ownerKind: KeyOwnerKind.AGENT });

const hex = (text: string): Uint8Array => new Uint8Array(Buffer.from(text, "hex"));
// The vectors' haiku-2 seed.
const SEED = "294b1138f53a25fc37fb20ad9c7a4364f97984322d851a5139d88785808d0091";
const privateKey = privateKeyFromSeed(hex(SEED));
const publicKey = rawPublicKey(privateKey);
const keyId = keyIdFor(publicKey);
const content = new TextEncoder().encode("content");
const good = canonicalBytes(
  CustodyRecordSchema,
  create(CustodyRecordSchema, {
    actor: "haiku-2",
    action: "originated",
    occurredAt: { seconds: 1767225600n },
    contentDigest: new Uint8Array(createHash("sha256").update(content).digest()),
    keyId,
    trackingId: "t-1",
  }),
);

const CASES: readonly [string, Uint8Array, string][] = [
  ["as built", good, "OK"],
  // Field 1 (sequence, a varint) length-delimited; protobuf-es alone reads sequence 2, then 5.
  ["sequence_as_bytes", Uint8Array.from([...hex("0a020805"), ...good]), "OK"],
  // Field 2 (actor, a string) as a varint; protobuf-es alone fails to read it.
  ["actor_as_varint", Uint8Array.from([...good, ...hex("1001")]), "OK"],
  // occurred_at.seconds length-delimited inside the Timestamp.
  ["timestamp_seconds_as_bytes", Uint8Array.from([...good, ...hex("22030a0100")]), "OK"],
  ["bad_utf8_actor", Uint8Array.from([...good, ...hex("1202fffe")]), "MALFORMED"],
  ["truncated", good.subarray(0, good.length - 1), "MALFORMED"],
];

test("each signed record gets the verdict Python gives it", () => {
  assert.equal(
    Buffer.from(good).toString("hex"),
    "12076861696b752d321a0a6f726967696e6174656422060880f2d6ca062a20ed7002b439e9ac845f22357d822bac144" +
      "4730fbdb6016d3ec9432297b9ec9f733a28656432353531392d353332313361303934313862303132343965623830" +
      "63373464633862313766324203742d31",
  );
  for (const [name, record, expected] of CASES) {
    const entry = create(CustodyEntrySchema, {
      record,
      keyId,
      signature: signEd25519(privateKey, Uint8Array.from([...ENTRY_DOMAIN, ...record])),
    });
    const report = verifyChain({
      trackingId: "t-1",
      content,
      chain: [fromBinary(CustodyEntrySchema, canonicalBytes(CustodyEntrySchema, entry))],
      keys: [createKey("haiku-2", publicKey)],
    });
    assert.equal(report.entries[0]?.name, expected, name);
  }
});
