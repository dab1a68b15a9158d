/**
 * The packetbus client for TypeScript on Node 20+: a connection to a packetbus server over gRPC
 * (HTTP/2, connect-node's gRPC transport), with auto-batching dispatch, subscriptions that resume
 * after a cursor, and consumer groups. Mirrors the Python client (client/packetbus/_client.py).
 */
import { randomUUID } from "node:crypto";

import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { createClient, type Client as RpcClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";

import { Batcher, DEFAULT_BATCH_SETTINGS, type BatchSettings } from "./batcher.js";
import { Agents } from "./agents.js";
import { Consumer, type ConsumeOptions } from "./consumer.js";
import { DEFAULT_RETRY_SETTINGS, retrying, type RetrySettings } from "./retrying.js";
import { Code, PacketbusError, SubscriptionGapError } from "./errors.js";
import { AgentService } from "./gen/packetbus/v1/agent_service_pb.js";
import { CustodyService } from "./gen/packetbus/v1/custody_service_pb.js";
import { TaskService } from "./gen/packetbus/v1/task_service_pb.js";
import { addressTo, asPacket, Inbox, INBOX_GROUP, inboxTopic, replyTo } from "./inbox.js";
import { TaskQueue } from "./tasks.js";
import { follow, startFields, type SubscribeOptions, type SubscribeStart } from "./subscription.js";
import { connectFailure, isLocalTarget, tlsFromEnv, tlsSessionOptions, tokenFromEnv, type TlsSettings, type Token } from "./security.js";
import {
  type ConsumerGroup,
  ConsumerGroupService,
} from "./gen/packetbus/v1/consumer_group_service_pb.js";
import { type Packet, PacketSchema } from "./gen/packetbus/v1/packet_pb.js";
import {
  type DispatchResult,
  type GetServerInfoResponse,
  type Hold,
  PacketService,
  type Receipt,
  StartPosition,
  type StoredPacket,
  type SubscriptionGap,
} from "./gen/packetbus/v1/packet_service_pb.js";

/** The schema version a packet gets when it names none ("1.1" needs a signed chain). */
export const DEFAULT_SCHEMA_VERSION = "1.0";

/** What a client accepts before it has asked the server (GetServerInfo's reply is small), and
 * what it falls back to when the server publishes no limit: the server's documented 16 MiB
 * (README "Reply sizes and the receive limit to set"). */
const FALLBACK_MAX_RESPONSE_BYTES = 16 * 1024 * 1024;

/** How to connect. */
export interface ConnectOptions {
  /** TLS (`true`: the system's trusted CAs; `false`: plain text, for a local server).
   * Absent: from PACKETBUS_TLS_* (see security.ts), else plain text. */
  readonly tls?: TlsSettings | boolean;
  /** A bearer token (a JWT), or a function returning the one to send now; sent as
   * `authorization: Bearer <token>` on every call, streams included. Absent: from
   * PACKETBUS_TOKEN or PACKETBUS_TOKEN_FILE. Sent only over TLS or to a loopback target:
   * `connect` refuses (TypeError) a token in plain text over a network. */
  readonly token?: Token;
  /** Bounds of the automatic dispatch batches. */
  readonly batch?: Partial<BatchSettings>;
  /** Deadline of the GetServerInfo call `connect` makes, in milliseconds (default 5,000). */
  readonly connectTimeoutMs?: number;
  /** How long `Inbox.request` waits for a reply when not told, in milliseconds (default 30,000);
   * also how long a call made without a timeout keeps being retried. */
  readonly defaultTimeoutMs?: number;
  /** Backoff between retries of a unary call (default 50 ms doubling up to 2 s, full jitter). */
  readonly retry?: Partial<RetrySettings>;
}

/** One packet's outcome in a batch: stored (`receipt`), held for approval (`held`), or refused
 * (`error`, a PacketbusError with its own code and field violations). */
export interface DispatchOutcome {
  readonly trackingId: string;
  readonly receipt?: Receipt;
  readonly held?: Hold;
  readonly error?: PacketbusError;
}

/** Where a subscription starts: "earliest" (everything the topic holds), "latest" (only what
 * comes next, the default), or `{ after: cursor }` (right after a receipt's cursor). */


/** A consumer group's settings (0: the server's defaults, 30 s and 5 attempts). */
export interface CreateConsumerGroupOptions {
  readonly start?: SubscribeStart;
  readonly ackDeadlineSeconds?: number;
  readonly maxDeliveryAttempts?: number;
}

/** A packet as a plain object (the fields to set), as `dispatch` and `dispatchBatch` take it. */
export type PacketInit = MessageInitShape<typeof PacketSchema>;

/** Fill what a sender may leave out, in place: tracking id (a UUID), dispatch time, schema
 * version. Done once, before the first send, so a repeat is the same packet to the server. */
export function fillDefaults(packet: Packet): Packet {
  if (packet.trackingId === "") {
    packet.trackingId = randomUUID();
  }
  if (packet.dispatchedAt === undefined) {
    packet.dispatchedAt = timestampNow();
  }
  if (packet.schemaVersion === "") {
    packet.schemaVersion = DEFAULT_SCHEMA_VERSION;
  }
  return packet;
}

function outcomeOf(result: DispatchResult): DispatchOutcome {
  const outcome = result.outcome;
  switch (outcome.case) {
    case "receipt":
      return { trackingId: result.trackingId, receipt: outcome.value };
    case "held":
      return { trackingId: result.trackingId, held: outcome.value };
    case "error":
      return { trackingId: result.trackingId, error: PacketbusError.fromStatus(outcome.value) };
    default:
      return {
        trackingId: result.trackingId,
        error: new PacketbusError(Code.Internal, "the server answered a result with no outcome"),
      };
  }
}


function bearer(token: Token): Interceptor {
  return (next) => async (request) => {
    request.header.set("authorization", `Bearer ${typeof token === "string" ? token : token()}`);
    return next(request);
  };
}

/** A connection to a packetbus server. Create it with `await Client.connect(target)`. */
export class Client {
  private readonly batcher: Batcher;
  /** The agent registry: register (with proof of a key), heartbeat, list, keep alive. */
  readonly agents: Agents;

  private constructor(
    private readonly sessions: Http2SessionManager,
    readonly packets: RpcClient<typeof PacketService>,
    readonly groups: RpcClient<typeof ConsumerGroupService>,
    readonly tasks: RpcClient<typeof TaskService>,
    agents: RpcClient<typeof AgentService>,
    /** CustodyService on this connection (its TLS and token): signing keys, agent key
     * registration (`registerAgentKey`), VerifyCustody. */
    readonly custody: RpcClient<typeof CustodyService>,
    /** What the server said about itself at connect time (version, limits). */
    readonly serverInfo: GetServerInfoResponse,
    batch: BatchSettings,
    private readonly defaultTimeoutMs: number,
    /** Shared with the retrying interceptor, which must not retry what close() ended. */
    private readonly state: { closed: boolean },
  ) {
    this.agents = new Agents(agents);
    this.batcher = new Batcher(async (sent) => {
      const response = await this.packets.dispatch({ packets: sent });
      return response.results;
    }, batch);
  }

  /**
   * Connect to `target` ("host:port"; default $PACKETBUS_TARGET or 127.0.0.1:50051) and ask the
   * server for its limits (GetServerInfo), so replies up to its `max_response_bytes` are
   * accepted. Rejects with PacketbusError (UNAVAILABLE: no server there; UNAUTHENTICATED: a
   * token or certificate it refuses).
   */
  static async connect(target?: string, options: ConnectOptions = {}): Promise<Client> {
    const address = target ?? process.env["PACKETBUS_TARGET"] ?? "127.0.0.1:50051";
    const tls = options.tls === undefined ? tlsFromEnv() : options.tls === false ? undefined : options.tls;
    const token = "token" in options ? options.token : tokenFromEnv();
    if (token !== undefined && tls === undefined && !isLocalTarget(address)) {
      // A bearer token in clear text over a network is as good as published.
      throw new TypeError(`a token is sent over TLS or to a loopback target only, not in plain text to ${address}`);
    }
    const baseUrl = `${tls === undefined ? "http" : "https"}://${address}`;
    const sessions = new Http2SessionManager(baseUrl, {}, tls === undefined || tls === true ? {} : tlsSessionOptions(tls));
    const authorized = token === undefined ? [] : [bearer(token)];
    const state = { closed: false };
    const defaultTimeoutMs = options.defaultTimeoutMs ?? 30_000;
    // Outermost, so that each attempt goes through the bearer interceptor (a fresh token).
    const retry = retrying({ ...DEFAULT_RETRY_SETTINGS, ...options.retry }, defaultTimeoutMs, () => state.closed);
    const transport = (readMaxBytes: number, interceptors: Interceptor[]): Transport =>
      createGrpcTransport({ baseUrl, sessionManager: sessions, interceptors, readMaxBytes });
    try {
      // Not retried: no server there is said at once (UNAVAILABLE), as before.
      const probe = createClient(PacketService, transport(FALLBACK_MAX_RESPONSE_BYTES, authorized));
      const info = await probe.getServerInfo({}, { timeoutMs: options.connectTimeoutMs ?? 5000 });
      const readMaxBytes = info.limits?.maxResponseBytes || FALLBACK_MAX_RESPONSE_BYTES;
      const shared = transport(readMaxBytes, [retry, ...authorized]);
      const serverBatch = info.limits?.maxBatchPackets || DEFAULT_BATCH_SETTINGS.maxBatchPackets;
      const batch: BatchSettings = {
        maxBatchPackets: Math.min(
          options.batch?.maxBatchPackets ?? DEFAULT_BATCH_SETTINGS.maxBatchPackets,
          serverBatch,
        ),
        maxBatchBytes: options.batch?.maxBatchBytes ?? DEFAULT_BATCH_SETTINGS.maxBatchBytes,
      };
      return new Client(
        sessions,
        createClient(PacketService, shared),
        createClient(ConsumerGroupService, shared),
        createClient(TaskService, shared),
        createClient(AgentService, shared),
        createClient(CustodyService, shared),
        info,
        batch,
        defaultTimeoutMs,
        state,
      );
    } catch (error) {
      sessions.abort();
      throw connectFailure(error);
    }
  }

  /**
   * Store one packet, batched with others behind the scenes; fills its tracking id, dispatch
   * time and schema version in place when missing. Resolves with its outcome (a receipt, or a
   * hold when a policy holds it for approval); rejects with PacketbusError when the packet is
   * refused (INVALID_ARGUMENT with field violations, ALREADY_EXISTS, PERMISSION_DENIED) or the
   * call fails (then `outcomeUnknown` says whether it may be stored: send it again as it is).
   */
  async dispatch(packet: Packet | PacketInit): Promise<DispatchOutcome> {
    this.ensureOpen();
    const filled = fillDefaults(asPacket(packet));
    const outcome = outcomeOf(await this.batcher.submit(filled));
    if (outcome.error !== undefined) {
      throw outcome.error;
    }
    return outcome;
  }

  /**
   * Store `packets` in one call; one outcome per packet, in order. A refused packet is reported
   * in its own outcome (`error`), never thrown: one bad packet never fails the others. Rejects
   * with PacketbusError only when the call as a whole fails.
   */
  async dispatchBatch(packets: readonly (Packet | PacketInit)[]): Promise<DispatchOutcome[]> {
    this.ensureOpen();
    const filled = packets.map((p) => fillDefaults(asPacket(p)));
    try {
      const response = await this.packets.dispatch({ packets: filled });
      return response.results.map(outcomeOf);
    } catch (error) {
      throw PacketbusError.fromError(error);
    }
  }

  /**
   * Follow `topic`: an async iterator of StoredPacket, in stored order, from `start`. Ends only
   * when the caller breaks out or aborts. A stream lost to the network or a draining server
   * (UNAVAILABLE) is opened again after the last packet yielded, with backoff, for up to
   * `reconnectWindowMs`. Packets the topic lost before the subscription got to them are never
   * skipped silently (see `onGap`). To resume after a restart of your own process, subscribe
   * with `{ after: cursor }`, the `receipt.cursor` of the last packet handled: no gap, no
   * duplicate.
   */
  async *subscribe(topic: string, options: SubscribeOptions = {}): AsyncGenerator<StoredPacket> {
    this.ensureOpen();
    yield* follow(this.packets, topic, options, () => this.state.closed);
  }


  /** Create a consumer group on `topic` (idempotent: the same settings again is no error).
   * Resolves with the group; rejects with PacketbusError (ALREADY_EXISTS: other settings). */
  async createConsumerGroup(
    topic: string,
    name: string,
    options: CreateConsumerGroupOptions = {},
  ): Promise<ConsumerGroup> {
    this.ensureOpen();
    try {
      const response = await this.groups.createConsumerGroup({
        topic,
        name,
        start: startFields(options.start ?? "earliest"),
        ackDeadlineSeconds: options.ackDeadlineSeconds ?? 0,
        maxDeliveryAttempts: options.maxDeliveryAttempts ?? 0,
      });
      if (response.group === undefined) {
        throw new PacketbusError(Code.Internal, "the server answered no group");
      }
      return response.group;
    } catch (error) {
      throw PacketbusError.fromError(error);
    }
  }

  /** Consume from group `group` of `topic` as `options.consumer`: an async iterator of leased
   * deliveries, each with `ack()`, `nack()` and `extend()` (see Consumer). A lost stream is
   * opened again for up to `reconnectWindowMs`, its unconfirmed settlements sent again. */
  consume(topic: string, group: string, options: ConsumeOptions): Consumer {
    this.ensureOpen();
    return new Consumer(this.groups, topic, group, options, () => this.state.closed);
  }

  /** The task queue `name` (a topic name): post, claim, get, list, results. */
  taskQueue(name: string): TaskQueue {
    this.ensureOpen();
    return new TaskQueue(name, this.tasks, fillDefaults);
  }

  /**
   * Open `agentId`'s inbox: an async iterator of leased deliveries, and `Inbox.request` for
   * request/reply. Creates the inbox's consumer group on first use, from the inbox's first
   * packet. Rejects with PacketbusError (INVALID_ARGUMENT for an id no agent can have).
   */
  async inbox(
    agentId: string,
    options: { readonly maxOutstandingPackets?: number; readonly reconnectWindowMs?: number } = {},
  ): Promise<Inbox> {
    this.ensureOpen();
    const topic = inboxTopic(agentId);
    await this.createConsumerGroup(topic, INBOX_GROUP, { start: "earliest" });
    const consumer = this.consume(topic, INBOX_GROUP, {
      consumer: agentId,
      maxOutstandingPackets: options.maxOutstandingPackets ?? 1000,
      ...(options.reconnectWindowMs === undefined ? {} : { reconnectWindowMs: options.reconnectWindowMs }),
    });
    return new Inbox(
      agentId,
      consumer,
      async (packet, settings) => this.sendPacket(packet, settings.timeoutMs),
      this.defaultTimeoutMs,
    );
  }

  /** Dispatch `packet` to `agentId`'s inbox (its topic set accordingly); as `dispatch`. */
  async sendTo(agentId: string, packet: Packet | PacketInit): Promise<DispatchOutcome> {
    return this.dispatch(addressTo(asPacket(packet), agentId));
  }

  /** Answer `request`: `packet` goes to the requester's inbox with `inReplyTo` set (see
   * `replyTo`); as `dispatch`. */
  async reply(request: StoredPacket | Packet, packet: Packet | PacketInit): Promise<DispatchOutcome> {
    return this.dispatch(replyTo(request, asPacket(packet)));
  }

  /** One packet in one Dispatch call under a deadline (a request must not wait behind a batch
   * past its own deadline); rejects with the packet's own error. */
  private async sendPacket(packet: Packet, timeoutMs: number | undefined): Promise<DispatchOutcome> {
    this.ensureOpen();
    let response;
    try {
      response = await this.packets.dispatch(
        { packets: [fillDefaults(packet)] },
        timeoutMs === undefined ? {} : { timeoutMs },
      );
    } catch (error) {
      throw PacketbusError.fromError(error);
    }
    const [result] = response.results;
    if (result === undefined) {
      throw new PacketbusError(Code.Internal, "the server answered no result");
    }
    const outcome = outcomeOf(result);
    if (outcome.error !== undefined) {
      throw outcome.error;
    }
    return outcome;
  }

  /** Close the connection: queued dispatches reject with CANCELLED, the HTTP/2 session ends. */
  close(): void {
    if (this.state.closed) {
      return;
    }
    this.state.closed = true;
    this.batcher.close();
    this.sessions.abort();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }

  private ensureOpen(): void {
    if (this.state.closed) {
      throw new PacketbusError(Code.Canceled, "the client is closed");
    }
  }
}
