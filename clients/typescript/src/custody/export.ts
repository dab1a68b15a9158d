/** Reading `packetbus export` JSON lines (CUSTODY.md 4.1) for offline verification. */
import { fromJson, type JsonValue } from "@bufbuild/protobuf";

import { CarcelEntrySchema } from "../gen/packetbus/v1/carcel_service_pb.js";
import { type SigningKey, SigningKeySchema } from "../gen/packetbus/v1/custody_pb.js";
import { type StoredPacket, StoredPacketSchema } from "../gen/packetbus/v1/packet_service_pb.js";

/** One export line, parsed: its keys, a stored packet (of a `packet` or `carcel` line), or another kind. */
export type ExportLine =
  | { readonly kind: "keys"; readonly keys: SigningKey[] }
  | { readonly kind: "packet" | "carcel"; readonly packet: StoredPacket }
  | { readonly kind: "decision" };

/**
 * Parse one export line (proto3 JSON). Throws SyntaxError for bad JSON and Error for an
 * unknown kind or a message that does not match its schema.
 */
export function parseExportLine(line: string): ExportLine {
  const doc = JSON.parse(line) as {
    kind?: unknown;
    keys?: JsonValue[];
    packet?: JsonValue;
    entry?: JsonValue;
  };
  switch (doc.kind) {
    case "keys":
      return { kind: "keys", keys: (doc.keys ?? []).map((key) => fromJson(SigningKeySchema, key)) };
    case "packet":
      return { kind: "packet", packet: fromJson(StoredPacketSchema, doc.packet ?? null) };
    case "carcel": {
      const entry = fromJson(CarcelEntrySchema, doc.entry ?? null);
      if (entry.packet === undefined) {
        throw new Error(`carcel entry ${entry.id} has no packet`);
      }
      return { kind: "carcel", packet: entry.packet };
    }
    case "decision":
      return { kind: "decision" };
    default:
      throw new Error(`unknown export line kind ${JSON.stringify(doc.kind)}`);
  }
}
