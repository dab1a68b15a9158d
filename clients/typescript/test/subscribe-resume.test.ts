/**
 * A subscription survives its server going away: the stream ends UNAVAILABLE (the server
 * drains on SIGTERM), the client reopens it on the server that comes back, and every packet
 * stored meanwhile arrives once, in order. Also for a subscription that had delivered nothing
 * yet: it reopens after the start cursor the server sent (`packetbus-start-cursor`), not at
 * "latest", which would skip them.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, test } from "node:test";

import { Client, SpeechAct, type PacketInit } from "../src/index.js";
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
    origin: "ts-resume",
    speechAct: SpeechAct.INFORM,
    contents: { case: "finding", value: { claim: `claim ${i}`, confidence: 0.5 } },
  };
}

for (const delivered of [0, 2]) {
  test(`a subscription that delivered ${delivered} packets misses nothing across a server restart`, async () => {
    const topic = `ts.resume.${randomUUID()}`;
    const listen = `127.0.0.1:${await freePort()}`;
    const storeUrl = `unix://${store.dataDir}/run/valkey.sock`;
    let relay = await startServer([], { listen, redisUrl: storeUrl });
    const consumer = await Client.connect(relay.target);
    try {
      await producer.dispatchBatch([packet(topic, -2), packet(topic, -1)]); // before: not news
      let opened!: () => void;
      const open = new Promise<void>((resolve) => (opened = resolve));
      const stream = consumer.subscribe(topic, { start: "latest", onOpen: () => opened() });
      const it = stream[Symbol.asyncIterator]();
      const got: string[] = [];
      const firstNext = it.next();
      firstNext.catch(() => undefined); // awaited below; a failure must not go unhandled meanwhile
      await open;
      const early =
        delivered === 0 ? [] : await producer.dispatchBatch(Array.from({ length: delivered }, (_, i) => packet(topic, i)));
      if (delivered > 0) {
        const first = await firstNext;
        got.push(first.value!.packet!.trackingId);
        for (let i = 1; i < delivered; i++) {
          got.push((await it.next()).value!.packet!.trackingId);
        }
      }
      await relay.stop(); // drains: the stream ends UNAVAILABLE
      const missed = await producer.dispatchBatch(Array.from({ length: 5 }, (_, i) => packet(topic, 100 + i)));
      relay = await startServer([], { listen, redisUrl: storeUrl });
      if (delivered === 0) {
        got.push((await firstNext).value!.packet!.trackingId);
      }
      while (got.length < delivered + 5) {
        got.push((await it.next()).value!.packet!.trackingId);
      }
      await it.return?.(undefined);
      assert.deepEqual(got, [...early, ...missed].map((outcome) => outcome.trackingId));
    } finally {
      consumer.close();
      await relay.stop();
    }
  });
}
