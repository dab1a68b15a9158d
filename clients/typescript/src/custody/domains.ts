/** The signature domain prefixes of CUSTODY.md 1.1: ASCII, then one zero byte. */
const ascii = new TextEncoder();

function domain(name: string): Uint8Array {
  return Uint8Array.from([...ascii.encode(name), 0]);
}

/** Prefix of an entry signed alone; followed by the entry's `record` bytes. */
export const ENTRY_DOMAIN = domain("packetbus.custody.entry.v1");
/** Prefix of a batch signature; followed by the 32-byte Merkle root. */
export const BATCH_DOMAIN = domain("packetbus.custody.batch.v1");
/** Prefix of a chain head's signature; followed by its `statement` bytes. */
export const HEAD_DOMAIN = domain("packetbus.custody.head.v1");
/** Prefix of an agent key's proof of possession; followed by agent_id || 0x00 || public key. */
export const AGENT_KEY_DOMAIN = domain("packetbus.agent-key.v1");

/** `prefix || parts...` as one byte array. */
export function concatBytes(...parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((total, part) => total + part.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** The bytes an agent key's proof (and an endorsement of it) signs (1.9). */
export function agentKeyMessage(agentId: string, publicKey: Uint8Array): Uint8Array {
  return concatBytes(AGENT_KEY_DOMAIN, ascii.encode(agentId), Uint8Array.of(0), publicKey);
}
