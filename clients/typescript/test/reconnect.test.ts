/**
 * Calls, consumers and inboxes survive their server going away: a "relay" server shares the
 * store of another (its embedded Valkey) and is stopped and started again on the same port.
 * Dispatches made meanwhile are retried until it is back and stored once each; a consumer's
 * stream reopens and the settlements it had not had confirmed are sent again; an inbox's
 * request gets its reply across the restart.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, test } from "node:test";
import { setTimeout as delay } from "node:timers/promises";

import { Client, SpeechAct, type ConsumedDelivery, type PacketInit } from "../src/index.js";
import { freePort, startServer, type RunningServer } from "./server.js";

let store: RunningServer;
let producer: Client;

before(async () => {
  store = await startServer(); // owns the embedded Valkey the relays share
  producer = await Client.connect(store.target);
});

after(async () => {
  producer?.close();
  await store?.stop();
});

function packet(topic: string, i: number): PacketInit {
  return {
    topic,
    origin: "ts-reconnect",
    speechAct: SpeechAct.INFORM,
    contents: { case: "finding", value: { claim: `claim ${i}`, confidence: 0.5 } },
  };
}

/** A relay on a fixed port over the store's Valkey, to stop and start again. */
async function relayOn(): Promise<{ start: () => Promise<RunningServer> }> {
  const listen = `127.0.0.1:${await freePort()}`;
  const redisUrl = `unix://${store.dataDir}/run/valkey.sock`;
  return { start: () => startServer([], { listen, redisUrl }) };
}

/** The tracking ids `topic` holds, in stored order (read from the store's own server). */
async function storedIds(topic: string): Promise<string[]> {
  const end = await producer.dispatchBatch([packet(topic, -1)]);
  const ids: string[] = [];
  for await (const stored of producer.subscribe(topic, { start: "earliest" })) {
    const id = stored.packet!.trackingId;
    if (id === end[0]!.trackingId) {
      break;
    }
    ids.push(id);
  }
  return ids;
}

test("dispatches made while the server is down are stored once each when it is back", async () => {
  const topic = `ts.reconnect.dispatch.${randomUUID()}`;
  const relay = await relayOn();
  let server = await relay.start();
  const client = await Client.connect(server.target);
  try {
    await server.stop();
    const sent = Array.from({ length: 5 }, (_, i) => client.dispatch(packet(topic, i)));
    const batch = client.dispatchBatch([packet(topic, 5), packet(topic, 6)]);
    await delay(1_000); // the calls keep being refused meanwhile
    server = await relay.start();
    const outcomes = [...(await Promise.all(sent)), ...(await batch)];
    assert.equal(outcomes.length, 7);
    for (const outcome of outcomes) {
      assert.equal(outcome.error, undefined);
      assert.ok(outcome.receipt !== undefined, "stored");
      const got = await producer.packets.getPacket({ trackingId: outcome.trackingId });
      assert.equal(got.packet?.packet?.trackingId, outcome.trackingId);
    }
    const stored = await storedIds(topic);
    assert.deepEqual([...stored].sort(), outcomes.map((o) => o.trackingId).sort());
  } finally {
    client.close();
    await server.stop();
  }
});

test("a consumer across a server restart: every packet acked once, settlements sent again", async () => {
  const topic = `ts.reconnect.consume.${randomUUID()}`;
  const group = "workers";
  await producer.createConsumerGroup(topic, group, { start: "earliest" });
  const dispatched = await producer.dispatchBatch(Array.from({ length: 6 }, (_, i) => packet(topic, i)));
  const relay = await relayOn();
  let server = await relay.start();
  const client = await Client.connect(server.target);
  // Two outstanding at most: a count the restart leaked would stall the deliveries.
  const consumer = client.consume(topic, group, { consumer: "w1", maxOutstandingPackets: 2 });
  const seen: { id: string; count: number }[] = [];
  const acked: string[] = [];
  try {
    const it = consumer[Symbol.asyncIterator]();
    const next = async (): Promise<ConsumedDelivery> => (await it.next()).value as ConsumedDelivery;
    const note = (d: ConsumedDelivery): string => {
      const id = d.delivery.packet!.packet!.trackingId;
      seen.push({ id, count: d.deliveryCount });
      return id;
    };
    // The first is nacked (delivered again, its count 2); the second acked while the server is
    // down, so its ack waits unconfirmed and goes out again on the next stream.
    const first = await next();
    const nacked = note(first);
    await first.nack();
    const second = await next();
    const waiting = note(second);
    await server.stop();
    const ack = second.ack();
    assert.equal(consumer.unconfirmed, 1);
    await delay(500);
    server = await relay.start();
    const result = await ack;
    assert.equal(result.deliveryId, second.deliveryId);
    acked.push(waiting);
    while (acked.length < 6) {
      const d = await next();
      const id = note(d);
      await d.ack();
      acked.push(id);
    }
    assert.equal(consumer.unconfirmed, 0);
    assert.deepEqual([...acked].sort(), dispatched.map((o) => o.trackingId).sort());
    assert.deepEqual(
      seen.filter((s) => s.id === nacked).map((s) => s.count),
      [1, 2],
    );
    assert.ok(seen.filter((s) => s.id !== nacked).every((s) => s.count === 1), JSON.stringify(seen));
    const info = await producer.groups.getConsumerGroup({ topic, name: group });
    assert.equal(info.group?.outstanding, 0n);
    await it.return?.(undefined);
  } finally {
    consumer.close();
    client.close();
    await server.stop();
  }
});

test("an inbox request gets its reply across a server restart", async () => {
  const asker = `ts-asker-${randomUUID()}`;
  const answerer = `ts-answerer-${randomUUID()}`;
  const relay = await relayOn();
  let server = await relay.start();
  const client = await Client.connect(server.target);
  const inbox = await client.inbox(asker);
  const answers = await producer.inbox(answerer);
  const answering = (async () => {
    let n = 0;
    for await (const delivery of answers) {
      await producer.reply(delivery.delivery.packet!, { ...packet("", n), origin: answerer });
      await delivery.ack();
      n += 1;
    }
  })();
  answering.catch(() => undefined);
  try {
    const before = await inbox.request(answerer, { contents: packet("", 100).contents }, { timeoutMs: 20_000 });
    assert.equal(before.delivery.packet?.packet?.origin, answerer);
    await server.stop();
    const request = inbox.request(answerer, { contents: packet("", 101).contents }, { timeoutMs: 20_000 });
    await delay(1_000);
    server = await relay.start();
    const reply = await request;
    const answered = reply.delivery.packet!.packet!;
    assert.equal(answered.origin, answerer);
    assert.notEqual(answered.inReplyTo, before.delivery.packet!.packet!.inReplyTo);
  } finally {
    await inbox.close();
    await answers.close();
    client.close();
    await server.stop();
  }
});
