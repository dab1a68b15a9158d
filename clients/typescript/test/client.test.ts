/**
 * The TypeScript client against a real `packetbus serve` (embedded Valkey): dispatch with
 * per-packet results, typed errors, subscriptions that resume after a cursor, and a consumer
 * group whose nacked delivery comes back.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";

import { Client, Code, PacketbusError, SpeechAct, type StoredPacket } from "../src/index.js";
import { startServer, type RunningServer } from "./server.js";

let server: RunningServer;
let bus: Client;

before(async () => {
  server = await startServer();
  bus = await Client.connect(server.target);
});

after(async () => {
  bus?.close();
  await server?.stop();
});

/** A finding packet on `topic` (a fresh topic per test keeps the tests independent). */
function finding(topic: string, claim: string) {
  return {
    topic,
    origin: "ts-test",
    speechAct: SpeechAct.INFORM,
    contents: { case: "finding" as const, value: { claim, confidence: 0.5 } },
  };
}

/** The first `count` packets of a subscription (then it is closed). */
async function take(stream: AsyncIterable<StoredPacket>, count: number): Promise<StoredPacket[]> {
  const seen: StoredPacket[] = [];
  for await (const stored of stream) {
    seen.push(stored);
    if (seen.length === count) {
      break;
    }
  }
  return seen;
}

describe("connect", () => {
  test("reads the server's limits and sets the receive limit from them", () => {
    assert.equal(bus.serverInfo.limits?.maxResponseBytes, 16 * 1024 * 1024);
    assert.ok(bus.serverInfo.supportedSchemaVersions.includes("1.0"));
  });

  test("no server there is UNAVAILABLE, as a PacketbusError", async () => {
    await assert.rejects(Client.connect("127.0.0.1:1", { connectTimeoutMs: 2000 }), (error) => {
      assert.ok(error instanceof PacketbusError);
      assert.equal(error.code, Code.Unavailable);
      assert.equal(error.codeName, "UNAVAILABLE");
      assert.equal(error.outcomeUnknown, false);
      return true;
    });
  });
});

describe("dispatch", () => {
  test("concurrent dispatches each get their own receipt, filled in place", async () => {
    const topic = `ts-dispatch-${randomUUID()}`;
    const outcomes = await Promise.all(
      [0, 1, 2, 3, 4].map((n) => bus.dispatch(finding(topic, `claim ${n}`))),
    );
    assert.equal(outcomes.length, 5);
    const cursors = new Set(outcomes.map((o) => o.receipt?.cursor));
    assert.equal(cursors.size, 5);
    for (const outcome of outcomes) {
      assert.equal(outcome.receipt?.topic, topic);
      assert.match(outcome.trackingId, /^[0-9a-f-]{36}$/);
    }
  });

  test("the same packet again answers the original receipt", async () => {
    const topic = `ts-idem-${randomUUID()}`;
    const packet = finding(topic, "once");
    const first = await bus.dispatchBatch([packet]);
    const again = await bus.dispatchBatch([{ ...packet, trackingId: first[0]!.trackingId }]);
    assert.equal(again[0]?.error, undefined);
    assert.equal(again[0]?.trackingId, first[0]?.trackingId);
    assert.equal(again[0]?.receipt?.cursor, first[0]?.receipt?.cursor);
    const stored = await take(bus.subscribe(topic, { start: "earliest" }), 1);
    assert.equal(stored[0]?.receipt?.cursor, first[0]?.receipt?.cursor);
  });

  test("a batch with a bad packet: the others are stored, the bad one has its own error", async () => {
    const topic = `ts-batch-${randomUUID()}`;
    const outcomes = await bus.dispatchBatch([
      finding(topic, "good 1"),
      { ...finding(topic, "bad"), ttlSeconds: 999_999 },
      finding(topic, "good 2"),
    ]);
    assert.equal(outcomes.length, 3);
    assert.ok(outcomes[0]?.receipt?.cursor);
    assert.ok(outcomes[2]?.receipt?.cursor);
    const error = outcomes[1]?.error;
    assert.ok(error instanceof PacketbusError);
    assert.equal(error.code, Code.InvalidArgument);
    assert.deepEqual(
      error.fieldViolations.map((v) => [v.field, v.reason]),
      [["ttl_seconds", "TTL_RANGE"]],
    );
  });

  test("dispatch of a bad packet throws INVALID_ARGUMENT with its field violations", async () => {
    await assert.rejects(bus.dispatch({ ...finding(`ts-bad-${randomUUID()}`, "x"), origin: "" }), (error) => {
      assert.ok(error instanceof PacketbusError);
      assert.equal(error.codeName, "INVALID_ARGUMENT");
      assert.deepEqual(
        error.fieldViolations.map((v) => [v.field, v.reason]),
        [["origin", "REQUIRED"]],
      );
      return true;
    });
  });
});

describe("subscribe", () => {
  test("from the earliest packet, then resumed after a cursor: no gap, no duplicate", async () => {
    const topic = `ts-sub-${randomUUID()}`;
    const outcomes = await bus.dispatchBatch(["a", "b", "c"].map((claim) => finding(topic, claim)));
    const all = await take(bus.subscribe(topic, { start: "earliest" }), 3);
    assert.deepEqual(
      all.map((s) => s.packet?.trackingId),
      outcomes.map((o) => o.trackingId),
    );
    const resumed = await take(bus.subscribe(topic, { start: { after: all[0]!.receipt!.cursor } }), 2);
    assert.deepEqual(
      resumed.map((s) => s.receipt?.cursor),
      all.slice(1).map((s) => s.receipt?.cursor),
    );
  });

  test("from the latest: only packets dispatched after it started", async () => {
    const topic = `ts-latest-${randomUUID()}`;
    await bus.dispatch(finding(topic, "before"));
    const controller = new AbortController();
    const stream = bus.subscribe(topic, { start: "latest", signal: controller.signal });
    const first = stream.next();
    // The subscription is open once the server has answered its headers; a packet dispatched
    // until then may or may not be "latest", so dispatch until one arrives.
    let arrived: IteratorResult<StoredPacket> | undefined;
    for (let n = 0; arrived === undefined && n < 50; n++) {
      await bus.dispatch(finding(topic, "after"));
      arrived = await Promise.race([first, new Promise<undefined>((r) => setTimeout(() => r(undefined), 100))]);
    }
    assert.ok(arrived !== undefined && arrived.done !== true);
    assert.equal(arrived.value.packet?.contents.case, "finding");
    assert.equal(
      arrived.value.packet?.contents.case === "finding" ? arrived.value.packet.contents.value.claim : "",
      "after",
    );
    controller.abort();
  });
});

describe("consumer groups", () => {
  test("a nacked delivery comes back with delivery count 2; acks are confirmed", async () => {
    const topic = `ts-group-${randomUUID()}`;
    const group = await bus.createConsumerGroup(topic, "workers", { start: "earliest" });
    assert.equal(group.name, "workers");
    const outcomes = await bus.dispatchBatch(["job-1", "job-2"].map((claim) => finding(topic, claim)));
    const consumer = bus.consume(topic, "workers", { consumer: "ts-worker-1" });
    const seen: [string, number][] = [];
    for await (const delivery of consumer) {
      const id = delivery.delivery.packet?.packet?.trackingId ?? "";
      seen.push([id, delivery.deliveryCount]);
      if (id === outcomes[0]!.trackingId && delivery.deliveryCount === 1) {
        const nacked = await delivery.nack({ delaySeconds: 0, reason: "try again" });
        assert.equal(nacked.deliveryId, delivery.deliveryId);
      } else {
        const acked = await delivery.ack();
        assert.equal(acked.deliveryId, delivery.deliveryId);
      }
      if (seen.length === 3) {
        break;
      }
    }
    assert.deepEqual(
      [...seen].sort(),
      [
        [outcomes[0]!.trackingId, 1],
        [outcomes[0]!.trackingId, 2],
        [outcomes[1]!.trackingId, 1],
      ].sort(),
    );
  });

  test("a bad group name is INVALID_ARGUMENT with field violations from the status details", async () => {
    await assert.rejects(bus.createConsumerGroup(`ts-bad-${randomUUID()}`, "no spaces allowed"), (error) => {
      assert.ok(error instanceof PacketbusError);
      assert.equal(error.code, Code.InvalidArgument);
      assert.deepEqual(
        error.fieldViolations.map((v) => v.field),
        ["name"],
      );
      return true;
    });
  });
});
