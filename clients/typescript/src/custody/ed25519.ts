/**
 * Strict Ed25519 (CUSTODY.md section 3) over node:crypto. node:crypto's verify alone is lax: it
 * accepted the identity key with an identity signature for every message, so the spec's checks
 * run first and node:crypto does only the RFC 8032 equation.
 */
import { createHash, createPrivateKey, createPublicKey, sign, verify, type KeyObject } from "node:crypto";

/** L, the order of the Ed25519 base point. */
export const GROUP_ORDER = 2n ** 252n + 27742317777372353535851937790883648493n;
const FIELD_PRIME = 2n ** 255n - 19n;

/** The seven small-order encodings of CUSTODY.md 3.3, sign bit cleared, as hex. */
export const SMALL_ORDER_POINTS: readonly string[] = [
  "0000000000000000000000000000000000000000000000000000000000000000",
  "0100000000000000000000000000000000000000000000000000000000000000",
  "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
  "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
  "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
  "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
  "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
];
const SMALL_ORDER = new Set(SMALL_ORDER_POINTS);

// RFC 8410 DER wrappers around a raw 32-byte Ed25519 seed / public key.
const PKCS8_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex");
const SPKI_PREFIX = Buffer.from("302a300506032b6570032100", "hex");

function littleEndian(bytes: Uint8Array): bigint {
  let value = 0n;
  for (let i = bytes.length - 1; i >= 0; i--) {
    value = (value << 8n) | BigInt(bytes[i]!);
  }
  return value;
}

/** True when the 32-byte encoding `point`, sign bit cleared, is on the small-order list. */
export function isSmallOrder(point: Uint8Array): boolean {
  if (point.length !== 32) {
    return false;
  }
  const cleared = Uint8Array.from(point);
  cleared[31]! &= 0x7f;
  return SMALL_ORDER.has(Buffer.from(cleared).toString("hex"));
}

/** Why `publicKey` cannot be registered (not 32 bytes, or small order), or undefined when it can. */
export function publicKeyProblem(publicKey: Uint8Array): string | undefined {
  if (publicKey.length !== 32) {
    return `an Ed25519 public key is 32 bytes, not ${publicKey.length}`;
  }
  return isSmallOrder(publicKey) ? "a small-order point is not a usable public key" : undefined;
}

/**
 * Strict RFC 8032 verification of the 64-byte `signature` over `message` with the 32-byte
 * `publicKey`: false for wrong lengths, S >= L, a small-order A or R, an A not canonically
 * encoded (y >= p), or a signature that does not satisfy the cofactorless equation. Never throws.
 */
export function verifyStrict(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  if (signature.length !== 64 || publicKey.length !== 32) {
    return false;
  }
  if (littleEndian(signature.subarray(32)) >= GROUP_ORDER) {
    return false;
  }
  if (isSmallOrder(publicKey) || isSmallOrder(signature.subarray(0, 32))) {
    return false;
  }
  // libsodium refuses a non-canonical A; OpenSSL's decoding is not documented to, so check here.
  const y = littleEndian(publicKey) & ((1n << 255n) - 1n);
  if (y >= FIELD_PRIME) {
    return false;
  }
  let key: KeyObject;
  try {
    key = createPublicKey({ key: Buffer.concat([SPKI_PREFIX, publicKey]), format: "der", type: "spki" });
    return verify(null, message, key, signature);
  } catch {
    // Not a point on the curve.
    return false;
  }
}

/** A node:crypto Ed25519 private key from its 32-byte RFC 8032 seed. Throws RangeError for another length. */
export function privateKeyFromSeed(seed: Uint8Array): KeyObject {
  if (seed.length !== 32) {
    throw new RangeError(`an Ed25519 seed is 32 bytes, not ${seed.length}`);
  }
  return createPrivateKey({ key: Buffer.concat([PKCS8_PREFIX, seed]), format: "der", type: "pkcs8" });
}

/** The raw 32-byte public key of an Ed25519 private or public KeyObject. */
export function rawPublicKey(key: KeyObject): Uint8Array {
  const publicKey = key.type === "private" ? createPublicKey(key) : key;
  const der = publicKey.export({ format: "der", type: "spki" });
  return new Uint8Array(der.subarray(der.length - 32));
}

/** RFC 8032 5.1.6 signature (64 bytes, deterministic) of `message` with an Ed25519 private key. */
export function signEd25519(privateKey: KeyObject, message: Uint8Array): Uint8Array {
  return new Uint8Array(sign(null, message, privateKey));
}

/** "ed25519-" and the lowercase hex of the first 16 bytes of SHA-256(publicKey): 40 characters (1.2). */
export function keyIdFor(publicKey: Uint8Array): string {
  return `ed25519-${createHash("sha256").update(publicKey).digest().subarray(0, 16).toString("hex")}`;
}
