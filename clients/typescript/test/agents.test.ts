/**
 * The agent registry against a real `packetbus serve`: registration with proof of possession of
 * an Ed25519 key (node:crypto), heartbeats kept by a background loop, liveness as listed.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";

import { AgentIdentity, AgentLiveness, Client, PacketbusError, agentKeyMessage } from "../src/index.js";
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

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe("agents", () => {
  test("the agent-key message is the domain, the id and the raw key", () => {
    const key = new Uint8Array(32).fill(7);
    assert.deepEqual(
      Buffer.from(agentKeyMessage("a-1", key)),
      Buffer.concat([Buffer.from("packetbus.agent-key.v1\0a-1\0"), Buffer.from(key)]),
    );
    const seeded = AgentIdentity.fromSeed("a-1", new Uint8Array(32).fill(1));
    assert.equal(seeded.publicKey.length, 32);
    assert.deepEqual(seeded.publicKey, AgentIdentity.fromSeed("a-1", new Uint8Array(32).fill(1)).publicKey);
  });

  test("register with a key proven by its signature: the key is bound, the agent live", async () => {
    const id = `ts-agent-${randomUUID()}`;
    const identity = AgentIdentity.generate(id);
    const response = await bus.agents.register(id, { role: "researcher", capabilities: ["search"], identity });
    assert.equal(response.created, true);
    assert.notEqual(response.agent?.keyId, "");
    assert.equal(response.agent?.liveness, AgentLiveness.LIVE);
    const again = await bus.agents.register(id, { role: "researcher", capabilities: ["search"], identity });
    assert.equal(again.created, true); // the same registration again answers the first one
    assert.equal(again.agent?.keyId, response.agent?.keyId);
    assert.deepEqual(await bus.agents.deregister(id), [id]);
  });

  test("a proof made by another key is UNAUTHENTICATED, and nothing is registered", async () => {
    const id = `ts-forger-${randomUUID()}`;
    const mine = AgentIdentity.generate(id);
    const other = AgentIdentity.generate(id);
    await assert.rejects(
      bus.agents.rpc.registerAgent({ agent: { id }, publicKey: mine.publicKey, publicKeyProof: other.proof() }),
      (error) => {
        const failure = PacketbusError.fromError(error);
        assert.equal(failure.codeName, "UNAUTHENTICATED", failure.message);
        return true;
      },
    );
    await assert.rejects(bus.agents.get(id), (error) => error instanceof PacketbusError && error.codeName === "NOT_FOUND");
  });

  test("a live agent heartbeats past its TTL and is listed live; a silent one turns stale", async () => {
    const live = `ts-live-${randomUUID()}`;
    const silent = `ts-silent-${randomUUID()}`;
    const errors: PacketbusError[] = [];
    const agent = await bus.agents.live(live, {
      role: "ts-heartbeat-test",
      ttlSeconds: 1,
      onError: (error) => errors.push(error),
    });
    await bus.agents.register(silent, { role: "ts-heartbeat-test", ttlSeconds: 1 });
    try {
      const registeredAt = agent.agent?.lastHeartbeatAt?.seconds ?? 0n;
      await sleep(3000);
      const listed = await bus.agents.list({ role: "ts-heartbeat-test", liveness: "live" });
      assert.deepEqual(
        listed.map((a) => a.id),
        [live],
      );
      assert.ok((agent.agent?.lastHeartbeatAt?.seconds ?? 0n) > registeredAt, "no heartbeat was answered");
      // Without heartbeats: stale after its TTL, removed after another (either, 3 s on).
      const silentNow = await bus.agents.get(silent).then(
        (a) => AgentLiveness[a.liveness],
        (error: PacketbusError) => error.codeName,
      );
      assert.ok(["STALE", "NOT_FOUND"].includes(silentNow), silentNow);
      const busy = await agent.setState("busy");
      assert.equal(busy.state, "busy");
    } finally {
      await agent.stop();
    }
    assert.deepEqual(errors, []);
    await assert.rejects(bus.agents.get(live), (error) => error instanceof PacketbusError && error.codeName === "NOT_FOUND");
  });
});
