/**
 * Chains of custody in TypeScript (protos/packetbus/v1/CUSTODY.md): canonical serialization,
 * Merkle hashing, key ids, strict Ed25519, offline chain verification, schema 1.1 signing.
 */
export { canonicalBytes, compareMapKeys } from "./canonical.js";
export { AGENT_KEY_DOMAIN, BATCH_DOMAIN, ENTRY_DOMAIN, HEAD_DOMAIN, agentKeyMessage } from "./domains.js";
export {
  GROUP_ORDER,
  SMALL_ORDER_POINTS,
  isSmallOrder,
  keyIdFor,
  privateKeyFromSeed,
  publicKeyProblem,
  rawPublicKey,
  signEd25519,
  verifyStrict,
} from "./ed25519.js";
export { parseExportLine } from "./export.js";
export { parseSigned } from "./parse.js";
export type { ExportLine } from "./export.js";
export { auditPath, leafHash, merkleRoot, nodeHash, rootFromProof, sha256 } from "./merkle.js";
export { SIGNED_SCHEMA_VERSION, agentKeyProof, contentBytes, registerAgentKey, signPacket } from "./sign.js";
export type { SignPacketOptions } from "./sign.js";
export {
  entryHash,
  entrySignatureOk,
  verdictName,
  verifyChain,
  verifyEntry,
  verifyHead,
  verifyStoredPacket,
} from "./verify.js";
export type {
  ChainInput,
  ChainReport,
  EntryReport,
  StoredPacketReport,
  TrustedKeys,
  VerdictName,
} from "./verify.js";
