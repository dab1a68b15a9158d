/**
 * Parsing signed bytes as Python's upb parser does, so a verdict never depends on the verifier's
 * language. protobuf-es reads a known field by its declared type whatever the wire type says;
 * upb keeps a known field with the wrong wire type as an unknown field. A signer could use the
 * difference (e.g. a length-delimited field 1 that protobuf-es reads as `sequence`), so such
 * fields are dropped before protobuf-es parses the rest.
 */
import {
  type DescField,
  type DescMessage,
  type MessageShape,
  ScalarType,
  fromBinary,
} from "@bufbuild/protobuf";
import { BinaryReader, BinaryWriter, WireType } from "@bufbuild/protobuf/wire";

function expectedWireType(field: DescField): WireType | undefined {
  if (field.fieldKind === "message" || field.fieldKind === "map" || field.fieldKind === "list") {
    // Records, statements and timestamps have no lists or maps; in a Packet they are left
    // to protobuf-es as they come (undefined: not checked).
    return field.fieldKind === "message" ? WireType.LengthDelimited : undefined;
  }
  const scalar = field.fieldKind === "enum" ? ScalarType.INT32 : field.scalar;
  switch (scalar) {
    case ScalarType.STRING:
    case ScalarType.BYTES:
      return WireType.LengthDelimited;
    case ScalarType.DOUBLE:
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
      return WireType.Bit64;
    case ScalarType.FLOAT:
    case ScalarType.FIXED32:
    case ScalarType.SFIXED32:
      return WireType.Bit32;
    default:
      return WireType.Varint;
  }
}

/**
 * `bytes` without the known fields upb would take as unknown (recursively). Throws on bytes
 * that do not parse at all.
 */
function upbView(desc: DescMessage, bytes: Uint8Array): Uint8Array {
  const reader = new BinaryReader(bytes);
  const writer = new BinaryWriter();
  while (reader.pos < reader.len) {
    const start = reader.pos;
    const [fieldNo, wireType] = reader.tag();
    const field = desc.fields.find((candidate) => candidate.number === fieldNo);
    const expected = field === undefined ? undefined : expectedWireType(field);
    if (field !== undefined && expected !== undefined && wireType !== expected) {
      reader.skip(wireType, fieldNo);
      continue;
    }
    if (field?.fieldKind === "message" && wireType === WireType.LengthDelimited) {
      const inner = upbView(field.message, reader.bytes());
      writer.tag(fieldNo, WireType.LengthDelimited).bytes(inner);
      continue;
    }
    reader.skip(wireType, fieldNo);
    writer.raw(bytes.subarray(start, reader.pos));
  }
  return writer.finish();
}

/**
 * Parse `bytes` as a message of `schema` the way upb does for the messages custody signs, or
 * undefined where upb raises (truncated data, bad UTF-8 in a string, a bad tag).
 */
export function parseSigned<Desc extends DescMessage>(
  schema: Desc,
  bytes: Uint8Array,
): MessageShape<Desc> | undefined {
  try {
    return fromBinary(schema, upbView(schema, bytes));
  } catch {
    return undefined;
  }
}
