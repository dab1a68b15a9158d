/**
 * The canonical serialization of CUSTODY.md section 2: protobuf binary as Python's upb writes it
 * with `deterministic=True`. protobuf-es's toBinary matches it except for map order (it writes a
 * map in JavaScript key order, and JavaScript enumerates integer-like keys first, so no object
 * order can express upb's), so this writer walks the message by reflection instead.
 */
import {
  type DescField,
  type DescMessage,
  type MessageShape,
  ScalarType,
} from "@bufbuild/protobuf";
import { reflect, type ReflectMessage } from "@bufbuild/protobuf/reflect";
import { BinaryWriter, WireType } from "@bufbuild/protobuf/wire";

const utf8 = new TextEncoder();

/**
 * The canonical bytes of `message` (a message of `schema`): fields by ascending number, proto3
 * defaults without presence omitted, set message fields and oneof members always written, map
 * entries in upb key order with key and value always written, unknown fields last as received.
 * Throws Error for a map with non-string keys (none is reachable from a Packet or a custody
 * message, and their upb order is not specified here).
 */
export function canonicalBytes<Desc extends DescMessage>(
  schema: Desc,
  message: MessageShape<Desc>,
): Uint8Array {
  const writer = new BinaryWriter();
  writeMessage(writer, reflect(schema, message));
  return writer.finish();
}

/**
 * upb's order of two map keys (CUSTODY.md 2, rule 5): bytewise over the common prefix of their
 * UTF-8 encodings; when one is a prefix of the other, the LONGER one first. Negative when `a`
 * goes first.
 */
export function compareMapKeys(a: string, b: string): number {
  const x = utf8.encode(a);
  const y = utf8.encode(b);
  const common = Math.min(x.length, y.length);
  for (let i = 0; i < common; i++) {
    if (x[i] !== y[i]) {
      return x[i]! - y[i]!;
    }
  }
  return y.length - x.length;
}

function writeMessage(writer: BinaryWriter, message: ReflectMessage): void {
  for (const field of message.sortedFields) {
    // isSet is false for a proto3 scalar at its default and true for a set message field or
    // the selected oneof member whatever its value: exactly rule 2's presence.
    if (!message.isSet(field)) {
      continue;
    }
    writeField(writer, field, message);
  }
  for (const unknown of message.getUnknown() ?? []) {
    writer.tag(unknown.no, unknown.wireType).raw(unknown.data);
  }
}

function writeField(writer: BinaryWriter, field: DescField, message: ReflectMessage): void {
  switch (field.fieldKind) {
    case "scalar":
      writeScalar(writer, field.number, field.scalar, message.get(field));
      return;
    case "enum":
      writeScalar(writer, field.number, ScalarType.INT32, message.get(field));
      return;
    case "message":
      writeChild(writer, field.number, message.get(field));
      return;
    case "list": {
      const list = message.get(field);
      for (const item of list) {
        if (field.listKind === "message") {
          writeChild(writer, field.number, item as ReflectMessage);
        } else {
          // Rule 4: packed numeric lists never occur in a Packet or custody message, and a
          // packed writer here would be untested; refuse rather than guess.
          const scalar = field.listKind === "enum" ? ScalarType.INT32 : field.scalar;
          if (scalar !== ScalarType.STRING && scalar !== ScalarType.BYTES) {
            throw new Error(`canonicalBytes: packed repeated field ${field.toString()} is not supported`);
          }
          writeScalar(writer, field.number, scalar, item);
        }
      }
      return;
    }
    case "map": {
      if (field.mapKey !== ScalarType.STRING) {
        throw new Error(`canonicalBytes: map ${field.toString()} has non-string keys`);
      }
      const map = message.get(field);
      const entries = [...map] as [string, unknown][];
      entries.sort(([a], [b]) => compareMapKeys(a, b));
      for (const [key, value] of entries) {
        writer.tag(field.number, WireType.LengthDelimited).fork();
        writeScalar(writer, 1, ScalarType.STRING, key);
        if (field.mapKind === "message") {
          writeChild(writer, 2, value as ReflectMessage);
        } else {
          const scalar = field.mapKind === "enum" ? ScalarType.INT32 : field.scalar;
          writeScalar(writer, 2, scalar, value);
        }
        writer.join();
      }
      return;
    }
  }
}

function writeChild(writer: BinaryWriter, fieldNo: number, child: ReflectMessage): void {
  writer.tag(fieldNo, WireType.LengthDelimited).fork();
  writeMessage(writer, child);
  writer.join();
}

function writeScalar(
  writer: BinaryWriter,
  fieldNo: number,
  type: ScalarType,
  value: unknown,
): void {
  switch (type) {
    case ScalarType.STRING:
      writer.tag(fieldNo, WireType.LengthDelimited).string(value as string);
      return;
    case ScalarType.BYTES:
      writer.tag(fieldNo, WireType.LengthDelimited).bytes(value as Uint8Array);
      return;
    case ScalarType.BOOL:
      writer.tag(fieldNo, WireType.Varint).bool(value as boolean);
      return;
    case ScalarType.DOUBLE:
      writer.tag(fieldNo, WireType.Bit64).double(value as number);
      return;
    case ScalarType.FLOAT:
      writer.tag(fieldNo, WireType.Bit32).float(value as number);
      return;
    case ScalarType.INT32:
      writer.tag(fieldNo, WireType.Varint).int32(value as number);
      return;
    case ScalarType.UINT32:
      writer.tag(fieldNo, WireType.Varint).uint32(value as number);
      return;
    case ScalarType.SINT32:
      writer.tag(fieldNo, WireType.Varint).sint32(value as number);
      return;
    case ScalarType.FIXED32:
      writer.tag(fieldNo, WireType.Bit32).fixed32(value as number);
      return;
    case ScalarType.SFIXED32:
      writer.tag(fieldNo, WireType.Bit32).sfixed32(value as number);
      return;
    case ScalarType.INT64:
      writer.tag(fieldNo, WireType.Varint).int64(value as bigint);
      return;
    case ScalarType.UINT64:
      writer.tag(fieldNo, WireType.Varint).uint64(value as bigint);
      return;
    case ScalarType.SINT64:
      writer.tag(fieldNo, WireType.Varint).sint64(value as bigint);
      return;
    case ScalarType.FIXED64:
      writer.tag(fieldNo, WireType.Bit64).fixed64(value as bigint);
      return;
    case ScalarType.SFIXED64:
      writer.tag(fieldNo, WireType.Bit64).sfixed64(value as bigint);
      return;
  }
}
