/**
 * Custody against a real `packetbus serve`: a schema 1.1 packet signed in TypeScript is accepted
 * and its stored chain verifies offline; a chain fetched with GetPacket verifies offline and a
 * tampered copy fails with the verdict its tampering earns; the server refuses what it must.
 */
import assert from "node:assert/strict";
import { generateKeyPairSync, type KeyObject } from "node:crypto";
import { after, before, test } from "node:test";

import { clone, create, toBinary } from "@bufbuild/protobuf";
import { createClient, type Client as RpcClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import {
  Client,
  Code,
  CustodyService,
  PacketSchema,
  PacketbusError,
  SpeechAct,
  type StoredPacket,
  StoredPacketSchema,
  contentBytes,
  registerAgentKey,
  signPacket,
  verifyStoredPacket,
} from "../src/index.js";
import { startServer, type RunningServer } from "./server.js";

let server: RunningServer;
let bus: Client;
let custody: RpcClient<typeof CustodyService>;

before(async () => {
  server = await startServer();
  bus = await Client.connect(server.target);
  custody = createClient(CustodyService, createGrpcTransport({ baseUrl: `http://${server.target}` }));
});

after(async () => {
  bus?.close();
  await server?.stop();
});

function newKey(): KeyObject {
  return generateKeyPairSync("ed25519").privateKey;
}

/** A task packet from `origin` whose labels JavaScript enumerates in another order than upb writes them. */
function taskPacket(origin: string) {
  return create(PacketSchema, {
    topic: "ts-custody",
    origin,
    speechAct: SpeechAct.REQUEST,
    contents: {
      case: "task",
      value: {
        description: "check the Q3 numbers",
        labels: { "10": "a", "9": "b", ab: "c", a: "d", "": "e" },
      },
    },
  });
}

async function stored(trackingId: string): Promise<StoredPacket> {
  const response = await bus.packets.getPacket({ trackingId });
  assert.ok(response.packet !== undefined);
  return response.packet;
}

async function signedAndStored(agent: string): Promise<StoredPacket> {
  const key = newKey();
  await registerAgentKey(custody, agent, key);
  const packet = signPacket(taskPacket(agent), key);
  const outcome = await bus.dispatch(packet);
  assert.equal(outcome.error, undefined);
  assert.ok(outcome.receipt !== undefined);
  return stored(packet.trackingId);
}

test("a 1.1 packet signed in TypeScript is accepted, and its stored chain verifies offline", async () => {
  const key = newKey();
  const registered = await registerAgentKey(custody, "ts-signer", key);
  assert.equal(registered.owner, "ts-signer");
  const packet = signPacket(taskPacket("ts-signer"), key);
  // protobuf-es alone would write these labels in JavaScript key order, which the server's
  // digest would not match: the canonical writer is what makes the signature count.
  const unsorted = toBinary(PacketSchema, create(PacketSchema, { ...packet, chainOfCustody: [] }));
  assert.notDeepEqual(unsorted, contentBytes(packet));
  const outcome = await bus.dispatch(packet);
  assert.equal(outcome.error, undefined);
  assert.ok(outcome.receipt !== undefined);

  const copy = await stored(packet.trackingId);
  assert.deepEqual(copy.content, contentBytes(packet));
  const { keys } = await custody.getSigningKeys({});
  const report = verifyStoredPacket(copy, keys);
  assert.deepEqual(
    report.entries.map((entry) => [entry.name, entry.record?.action, entry.record?.actor]),
    [
      ["OK", "originated", "ts-signer"],
      ["OK", "received", bus.serverInfo.serverId],
      ["OK", "dispatched", bus.serverInfo.serverId],
    ],
  );
  assert.equal(report.headName, "OK");
  assert.equal(report.contentMatchesPacket, true);
  assert.equal(report.verified, true);
  // The server's own verifier agrees.
  const server = await custody.verifyCustody({ trackingId: packet.trackingId });
  assert.equal(server.verified, true);
  assert.equal(server.entries.length, 3);
});

test("a chain from GetPacket verifies offline; tampered copies fail with the right verdict", async () => {
  const copy = await signedAndStored("ts-tamper");
  const { keys } = await custody.getSigningKeys({});
  assert.equal(verifyStoredPacket(copy, keys).verified, true);
  const names = (tampered: StoredPacket) => {
    const report = verifyStoredPacket(tampered, keys);
    assert.equal(report.verified, false);
    return [report.entries.map((entry) => entry.name), report.headName];
  };

  const content = clone(StoredPacketSchema, copy);
  content.content[content.content.length - 1]! ^= 0x01;
  const allChanged = ["CONTENT_DIGEST_MISMATCH", "CONTENT_DIGEST_MISMATCH", "CONTENT_DIGEST_MISMATCH"];
  assert.deepEqual(names(content), [allChanged, "CONTENT_DIGEST_MISMATCH"]);

  const record = clone(StoredPacketSchema, copy);
  record.packet!.chainOfCustody[1]!.record[4]! ^= 0x01;
  assert.deepEqual(names(record), [["OK", "BAD_SIGNATURE", "BROKEN_LINK"], "OK"]);

  const deleted = clone(StoredPacketSchema, copy);
  deleted.packet!.chainOfCustody.splice(1, 1);
  assert.deepEqual(names(deleted), [["OK", "OUT_OF_ORDER"], "INCOMPLETE"]);

  const reordered = clone(StoredPacketSchema, copy);
  const chain = reordered.packet!.chainOfCustody;
  [chain[1], chain[2]] = [chain[2]!, chain[1]!];
  assert.deepEqual(names(reordered), [["OK", "OUT_OF_ORDER", "OUT_OF_ORDER"], "INCOMPLETE"]);

  const unknown = verifyStoredPacket(copy, keys.filter((key) => key.owner !== "ts-tamper"));
  assert.deepEqual(unknown.entries.map((entry) => entry.name), ["UNKNOWN_KEY", "OK", "OK"]);

  // The readable packet must say what was signed, even when every signature holds.
  const readable = clone(StoredPacketSchema, copy);
  readable.packet!.topic = "elsewhere";
  const report = verifyStoredPacket(readable, keys);
  assert.deepEqual([report.entries.map((entry) => entry.name), report.headName], [["OK", "OK", "OK"], "OK"]);
  assert.equal(report.contentMatchesPacket, false);
  assert.equal(report.verified, false);
});

test("the server refuses a packet changed after signing, or signed by an unregistered key", async () => {
  const key = newKey();
  await registerAgentKey(custody, "ts-refused", key);
  const changed = signPacket(taskPacket("ts-refused"), key);
  changed.topic = "ts-custody-other";
  await assert.rejects(bus.dispatch(changed), (error: unknown) => {
    assert.ok(error instanceof PacketbusError);
    assert.equal(error.code, Code.Unauthenticated);
    return true;
  });

  const stranger = signPacket(taskPacket("ts-refused"), newKey());
  await assert.rejects(bus.dispatch(stranger), (error: unknown) => {
    assert.ok(error instanceof PacketbusError);
    assert.equal(error.code, Code.PermissionDenied);
    return true;
  });
  // Neither was stored.
  for (const packet of [changed, stranger]) {
    await assert.rejects(bus.packets.getPacket({ trackingId: packet.trackingId }));
  }
});
