/**
 * The auto-batching rule, observed on the calls the batcher makes: a lone packet goes at once;
 * packets dispatched behind a call in flight go together when it completes, within the bounds.
 * (The calls are recorded and answered here; the end-to-end path is client.test.ts.)
 */
import assert from "node:assert/strict";
import { test } from "node:test";

import { create } from "@bufbuild/protobuf";

import { Batcher } from "../src/batcher.js";
import { PacketSchema, type Packet } from "../src/gen/packetbus/v1/packet_pb.js";
import { DispatchResultSchema, type DispatchResult } from "../src/gen/packetbus/v1/packet_service_pb.js";
import { Code, PacketbusError } from "../src/errors.js";

function packet(n: number): Packet {
  return create(PacketSchema, { trackingId: `p${n}`, origin: "o", topic: "t" });
}

/** A send that records each call's tracking ids and answers when `release` is called. */
function recordingSend() {
  const calls: string[][] = [];
  const waiting: (() => void)[] = [];
  const send = (packets: Packet[]): Promise<DispatchResult[]> => {
    calls.push(packets.map((p) => p.trackingId));
    return new Promise((resolve) => {
      waiting.push(() =>
        resolve(packets.map((p) => create(DispatchResultSchema, { trackingId: p.trackingId }))),
      );
    });
  };
  const release = (): void => waiting.shift()?.();
  return { calls, send, release };
}

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

test("packets behind a call in flight go out together when it completes", async () => {
  const { calls, send, release } = recordingSend();
  const batcher = new Batcher(send, { maxBatchPackets: 3, maxBatchBytes: 1 << 20 });
  const first = batcher.submit(packet(0));
  await tick();
  assert.deepEqual(calls, [["p0"]]); // nothing in flight: sent at once, alone
  const rest = [1, 2, 3, 4].map((n) => batcher.submit(packet(n)));
  await tick();
  assert.equal(calls.length, 1); // waiting behind the call in flight
  release();
  assert.equal((await first).trackingId, "p0");
  await tick();
  assert.deepEqual(calls[1], ["p1", "p2", "p3"]); // one batch, bounded by maxBatchPackets
  release();
  await tick();
  assert.deepEqual(calls[2], ["p4"]);
  release();
  assert.deepEqual(
    (await Promise.all(rest)).map((r) => r.trackingId),
    ["p1", "p2", "p3", "p4"],
  );
});

test("a failed call fails each of its packets with the call's error; close cancels the queue", async () => {
  const batcher = new Batcher(async () => {
    throw new PacketbusError(Code.Unavailable, "gone", { outcomeUnknown: true });
  });
  await assert.rejects(batcher.submit(packet(0)), (error) => {
    assert.ok(error instanceof PacketbusError);
    assert.equal(error.code, Code.Unavailable);
    assert.equal(error.outcomeUnknown, true);
    return true;
  });
  batcher.close();
  await assert.rejects(batcher.submit(packet(1)), (error) => {
    assert.ok(error instanceof PacketbusError);
    assert.equal(error.codeName, "CANCELLED");
    return true;
  });
});
