/**
 * Schema 1.1 agent-signed packets (CUSTODY.md 1.5) and agent key registration (1.9): what a
 * TypeScript agent needs to originate a packet the server verifies against its registered key.
 */
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { Client as RpcClient } from "@connectrpc/connect";
import { type KeyObject, randomUUID } from "node:crypto";

import {
  type CustodyEntry,
  CustodyEntrySchema,
  CustodyRecordSchema,
  type SigningKey,
} from "../gen/packetbus/v1/custody_pb.js";
import type { CustodyService } from "../gen/packetbus/v1/custody_service_pb.js";
import { type Packet, PacketSchema } from "../gen/packetbus/v1/packet_pb.js";
import { canonicalBytes } from "./canonical.js";
import { ENTRY_DOMAIN, agentKeyMessage, concatBytes } from "./domains.js";
import { keyIdFor, rawPublicKey, signEd25519 } from "./ed25519.js";
import { sha256 } from "./merkle.js";

/** The schema version of agent-signed packets. */
export const SIGNED_SCHEMA_VERSION = "1.1";

/** The packet's content bytes (1.5): the packet without its chain, canonically serialized. */
export function contentBytes(packet: Packet): Uint8Array {
  return canonicalBytes(PacketSchema, { ...packet, chainOfCustody: [] });
}

/** Options of signPacket. */
export interface SignPacketOptions {
  /** TTL to fill when the packet has none, in seconds; default 3600. */
  readonly ttlSeconds?: number;
  /** The entry's occurred_at, in ms since the epoch; default now. */
  readonly nowMs?: number;
}

/**
 * Make `packet` a schema 1.1 packet signed by its origin agent with `privateKey` (an Ed25519
 * node:crypto KeyObject whose public key is registered for `packet.origin`): fills
 * schema_version "1.1" and, when unset, tracking_id (a UUID), dispatched_at (now) and
 * ttl_seconds, then replaces the chain with one `originated` entry signed alone. Returns a new
 * Packet; `packet` is not changed. Throws Error when `packet.origin` is empty.
 */
export function signPacket(
  packet: Packet | MessageInitShape<typeof PacketSchema>,
  privateKey: KeyObject,
  options: SignPacketOptions = {},
): Packet {
  const nowMs = options.nowMs ?? Date.now();
  const signed = create(PacketSchema, { ...packet, chainOfCustody: [] });
  if (signed.origin === "") {
    throw new Error("a signed packet needs its origin agent id");
  }
  signed.schemaVersion = SIGNED_SCHEMA_VERSION;
  // The server would fill these after the signature otherwise, changing the content it hashes.
  if (signed.trackingId === "") {
    signed.trackingId = randomUUID();
  }
  signed.dispatchedAt ??= timestampFromMs(nowMs);
  if (signed.ttlSeconds === 0) {
    signed.ttlSeconds = options.ttlSeconds ?? 3600;
  }
  const keyId = keyIdFor(rawPublicKey(privateKey));
  const record = canonicalBytes(
    CustodyRecordSchema,
    create(CustodyRecordSchema, {
      sequence: 0n,
      actor: signed.origin,
      action: "originated",
      occurredAt: timestampFromMs(nowMs),
      contentDigest: sha256(contentBytes(signed)),
      keyId,
      trackingId: signed.trackingId,
    }),
  );
  const entry: CustodyEntry = create(CustodyEntrySchema, {
    record,
    signature: signEd25519(privateKey, concatBytes(ENTRY_DOMAIN, record)),
    keyId,
  });
  signed.chainOfCustody = [entry];
  return signed;
}

/** The 64-byte proof of possession of `privateKey` for `agentId` (1.9). */
export function agentKeyProof(agentId: string, privateKey: KeyObject): Uint8Array {
  return signEd25519(privateKey, agentKeyMessage(agentId, rawPublicKey(privateKey)));
}

/**
 * Register `privateKey`'s public key for `agentId` with CustodyService.RegisterAgentKey (with
 * its proof of possession); resolves with the registered SigningKey. Registering the same key
 * again is fine. Rejects with the server's ConnectError (INVALID_ARGUMENT for a bad id or key,
 * UNAUTHENTICATED for a proof that does not verify, PERMISSION_DENIED when the agent's keys
 * belong to another principal).
 */
export async function registerAgentKey(
  custody: RpcClient<typeof CustodyService>,
  agentId: string,
  privateKey: KeyObject,
): Promise<SigningKey> {
  const response = await custody.registerAgentKey({
    agentId,
    publicKey: rawPublicKey(privateKey),
    proof: agentKeyProof(agentId, privateKey),
  });
  if (response.key === undefined) {
    throw new Error("RegisterAgentKey answered without the key");
  }
  return response.key;
}
