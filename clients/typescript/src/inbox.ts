/**
 * Agent inboxes and request/reply, built on topics and consumer groups, as the Python client
 * does (client/packetbus/_inbox.py), so agents of either language reach each other.
 *
 * An agent's inbox is the topic `inbox/<agent id>` (characters a topic name cannot hold are
 * written `:<hex>` per UTF-8 byte) with one consumer group, `inbox`, that starts at the inbox's
 * first packet: a packet sent before the agent ever read its inbox is still delivered.
 * Request/reply follows FIPA: a request carries `replyWith`; the answer carries `inReplyTo` with
 * the same value and goes to the requester's inbox.
 */
import { randomUUID } from "node:crypto";

import { create, type MessageInitShape } from "@bufbuild/protobuf";

import type { ConsumedDelivery, Consumer } from "./consumer.js";
import { Code, PacketbusError } from "./errors.js";
import { type Packet, PacketSchema } from "./gen/packetbus/v1/packet_pb.js";
import type { StoredPacket } from "./gen/packetbus/v1/packet_service_pb.js";
import { SpeechAct } from "./gen/packetbus/v1/speech_act_pb.js";
import { Pushable } from "./pushable.js";

/** The consumer group every inbox is read through. */
export const INBOX_GROUP = "inbox";
const INBOX_PREFIX = "inbox/";
const TOPIC_SAFE = /^[A-Za-z0-9_.-]$/;
/** The server's agent id rule: 1-255 bytes of UTF-8. */
const MAX_AGENT_ID_BYTES = 255;

type PacketInit = MessageInitShape<typeof PacketSchema>;

/** The topic holding `agentId`'s inbox. Throws TypeError for an id no agent can have (empty, or
 * over 255 bytes of UTF-8). */
export function inboxTopic(agentId: string): string {
  const size = Buffer.byteLength(agentId, "utf8");
  if (size === 0 || size > MAX_AGENT_ID_BYTES) {
    throw new TypeError(`an agent id is 1..${MAX_AGENT_ID_BYTES} bytes of UTF-8, not ${size}`);
  }
  let encoded = "";
  for (const char of agentId) {
    encoded += TOPIC_SAFE.test(char)
      ? char
      : [...Buffer.from(char, "utf8")].map((b) => `:${b.toString(16).padStart(2, "0")}`).join("");
  }
  return INBOX_PREFIX + encoded;
}

/** `packet` addressed to `agentId`'s inbox (its topic set), in place. */
export function addressTo(packet: Packet, agentId: string): Packet {
  packet.topic = inboxTopic(agentId);
  return packet;
}

/** Make `reply` the answer to `request`, in place: to the requester's inbox, in its
 * conversation, with `inReplyTo` = the request's `replyWith`, INFORM unless it says otherwise.
 * Throws TypeError when the request has no `replyWith` (it expects no reply). */
export function replyTo(request: StoredPacket | Packet, reply: Packet): Packet {
  const asked = request.$typeName === "packetbus.v1.StoredPacket" ? request.packet : request;
  if (asked === undefined || asked.replyWith === "") {
    throw new TypeError("the request has no replyWith: it does not expect a reply");
  }
  addressTo(reply, asked.origin);
  reply.inReplyTo = asked.replyWith;
  if (asked.conversationId !== "" && reply.conversationId === "") {
    reply.conversationId = asked.conversationId;
  }
  if (asked.protocol !== "" && reply.protocol === "") {
    reply.protocol = asked.protocol;
  }
  if (reply.speechAct === SpeechAct.UNSPECIFIED) {
    reply.speechAct = SpeechAct.INFORM;
  }
  return reply;
}

/** A packet message from either shape a caller may hold. */
export function asPacket(packet: Packet | PacketInit): Packet {
  return "$typeName" in packet && packet.$typeName === "packetbus.v1.Packet"
    ? (packet as Packet)
    : create(PacketSchema, packet);
}

interface Waiter {
  readonly resolve: (delivery: ConsumedDelivery) => void;
  readonly reject: (error: PacketbusError) => void;
}

/**
 * An agent's inbox: an async iterator of leased deliveries (ack or nack each, as in any consumer
 * group), plus `request`. Replies to this agent's requests go to the `request` call waiting for
 * them (and are acked); every other delivery goes to the iterator. Open it with
 * `await client.inbox(agentId)`; `close()` it when done.
 */
export class Inbox implements AsyncIterable<ConsumedDelivery> {
  private readonly waiting = new Map<string, Waiter>();
  private readonly others = new Pushable<ConsumedDelivery | PacketbusError>();
  private router: Promise<void> | undefined;
  private ended: PacketbusError | undefined;
  private closed = false;

  constructor(
    readonly agentId: string,
    private readonly consumer: Consumer,
    private readonly dispatch: (packet: Packet, settings: { timeoutMs?: number }) => Promise<unknown>,
    private readonly defaultTimeoutMs: number,
  ) {}

  /** The inbox's topic. */
  get topic(): string {
    return inboxTopic(this.agentId);
  }

  private start(): void {
    if (this.closed) {
      throw new PacketbusError(Code.Canceled, "the inbox is closed");
    }
    this.router ??= this.route();
  }

  private async route(): Promise<void> {
    let ended = new PacketbusError(Code.Canceled, "the inbox is closed");
    try {
      for await (const delivery of this.consumer) {
        const key = delivery.delivery.packet?.packet?.inReplyTo ?? "";
        const waiter = key === "" ? undefined : this.waiting.get(key);
        if (waiter !== undefined) {
          this.waiting.delete(key);
          // The reply is handled by the `request` that waited for it; a failed ack only means
          // it may come again, and then nobody waits for it: it goes to the iterator.
          delivery.ack().catch(() => undefined);
          waiter.resolve(delivery);
        } else {
          this.others.push(delivery);
        }
      }
    } catch (error) {
      ended = PacketbusError.fromError(error, false);
      this.others.push(ended);
    } finally {
      // However the stream ended, nothing can wait for it any longer.
      this.ended = ended;
      this.others.end();
      this.failWaiting(ended);
    }
  }

  private failWaiting(error: PacketbusError): void {
    for (const waiter of this.waiting.values()) {
      waiter.reject(error);
    }
    this.waiting.clear();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<ConsumedDelivery> {
    this.start();
    for await (const next of this.others) {
      if (next instanceof PacketbusError) {
        throw next;
      }
      yield next;
    }
  }

  /**
   * Send `packet` to agent `to` as a request and wait for the reply in this inbox. Sets what is
   * unset: origin (this agent), speech act (REQUEST), tracking id (a new UUID), replyWith (the
   * tracking id: a request rebuilt with the same tracking id is the same request) and
   * conversationId (the same). Resolves with the reply's delivery (already acked); rejects with
   * PacketbusError DEADLINE_EXCEEDED when no reply comes within `timeoutMs` (default: the
   * client's 30 s), CANCELLED when the inbox is or gets closed, or the dispatch's error.
   */
  async request(
    to: string,
    packet: Packet | PacketInit,
    options: { readonly timeoutMs?: number } = {},
  ): Promise<ConsumedDelivery> {
    this.start();
    if (this.ended !== undefined) {
      throw this.ended;
    }
    const request = asPacket(packet);
    if (request.origin === "") {
      request.origin = this.agentId;
    }
    if (request.speechAct === SpeechAct.UNSPECIFIED) {
      request.speechAct = SpeechAct.REQUEST;
    }
    if (request.trackingId === "") {
      request.trackingId = randomUUID();
    }
    if (request.replyWith === "") {
      request.replyWith = request.trackingId;
    }
    if (request.conversationId === "") {
      request.conversationId = request.replyWith;
    }
    addressTo(request, to);
    const key = request.replyWith;
    const limitMs = options.timeoutMs ?? this.defaultTimeoutMs;
    let timer: NodeJS.Timeout | undefined;
    const reply = new Promise<ConsumedDelivery>((resolve, reject) => {
      this.waiting.set(key, { resolve, reject });
      timer = setTimeout(
        () => reject(new PacketbusError(Code.DeadlineExceeded, `no reply to ${key} from ${to} within ${limitMs} ms`)),
        limitMs,
      );
    });
    try {
      await this.dispatch(request, { timeoutMs: limitMs });
      return await reply;
    } finally {
      clearTimeout(timer);
      this.waiting.delete(key);
      reply.catch(() => undefined); // rejected while dispatch threw: handled, not unhandled
    }
  }

  /** Stop routing and close the consumer: `request` calls still waiting reject with CANCELLED,
   * iteration ends. Deliveries not yet acked come back after the group's ack deadline. */
  async close(): Promise<void> {
    if (this.closed) {
      return;
    }
    this.closed = true;
    this.failWaiting(new PacketbusError(Code.Canceled, "the inbox is closed"));
    this.consumer.close();
    this.others.end();
    await this.router;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
