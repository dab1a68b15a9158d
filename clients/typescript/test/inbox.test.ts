/**
 * Agent inboxes against a real `packetbus serve`: two TS agents, each with its own connection
 * and inbox, exchange a request and its reply (FIPA reply-with / in-reply-to), on the same
 * topics and group the Python client uses.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";

import { Client, PacketbusError, SpeechAct, inboxTopic } from "../src/index.js";
import { startServer, type RunningServer } from "./server.js";

let server: RunningServer;
let alice: Client;
let bob: Client;

before(async () => {
  server = await startServer();
  alice = await Client.connect(server.target);
  bob = await Client.connect(server.target);
});

after(async () => {
  alice?.close();
  bob?.close();
  await server?.stop();
});

function question(text: string) {
  return { contents: { case: "finding" as const, value: { claim: text, confidence: 0.5 } } };
}

describe("inboxes", () => {
  test("an inbox's topic is named as the Python client names it", () => {
    assert.equal(inboxTopic("agent-7.x_y"), "inbox/agent-7.x_y");
    assert.equal(inboxTopic("a b/é"), "inbox/a:20b:2f:c3:a9");
    assert.throws(() => inboxTopic(""), TypeError);
    assert.throws(() => inboxTopic("x".repeat(256)), TypeError);
  });

  test("two agents exchange a request and its reply", async () => {
    const a = `ts-alice-${randomUUID()}`;
    const b = `ts-bob-${randomUUID()}`;
    const aliceInbox = await alice.inbox(a);
    const bobInbox = await bob.inbox(b);
    try {
      // Bob answers the first request his inbox holds, then acks it.
      const answered = (async () => {
        for await (const delivery of bobInbox) {
          const asked = delivery.delivery.packet!;
          const claim = asked.packet?.contents.case === "finding" ? asked.packet.contents.value.claim : "";
          await bob.reply(asked, { origin: b, ...question(`answer to: ${claim}`) });
          await delivery.ack();
          return asked;
        }
        throw new Error("bob's inbox ended without a request");
      })();
      const reply = await aliceInbox.request(b, question("what is 6 x 7?"), { timeoutMs: 20_000 });
      const asked = await answered;
      const request = asked.packet!;
      assert.equal(request.origin, a);
      assert.equal(request.topic, inboxTopic(b));
      assert.equal(request.speechAct, SpeechAct.REQUEST);
      assert.equal(request.replyWith, request.trackingId);
      assert.equal(request.conversationId, request.replyWith);
      const answer = reply.delivery.packet!.packet!;
      assert.equal(answer.origin, b);
      assert.equal(answer.topic, inboxTopic(a));
      assert.equal(answer.speechAct, SpeechAct.INFORM);
      assert.equal(answer.inReplyTo, request.replyWith);
      assert.equal(answer.conversationId, request.conversationId);
      assert.equal(answer.contents.case === "finding" ? answer.contents.value.claim : "", "answer to: what is 6 x 7?");
    } finally {
      await aliceInbox.close();
      await bobInbox.close();
    }
  });

  test("a packet sent before the inbox was ever opened is delivered to its iterator", async () => {
    const c = `ts-carol-${randomUUID()}`;
    const sent = await alice.sendTo(c, { origin: "ts-alice", speechAct: SpeechAct.INFORM, ...question("hello") });
    const inbox = await bob.inbox(c);
    try {
      for await (const delivery of inbox) {
        assert.equal(delivery.delivery.packet?.packet?.trackingId, sent.trackingId);
        await delivery.ack();
        break;
      }
    } finally {
      await inbox.close();
    }
  });

  test("no reply in time is DEADLINE_EXCEEDED; a closed inbox refuses requests with CANCELLED", async () => {
    const inbox = await alice.inbox(`ts-dave-${randomUUID()}`);
    await assert.rejects(
      inbox.request(`ts-nobody-${randomUUID()}`, question("anyone?"), { timeoutMs: 500 }),
      (error) => error instanceof PacketbusError && error.codeName === "DEADLINE_EXCEEDED",
    );
    await inbox.close();
    await assert.rejects(
      inbox.request("ts-nobody", question("still there?")),
      (error) => error instanceof PacketbusError && error.codeName === "CANCELLED",
    );
  });
});
