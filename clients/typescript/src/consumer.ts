/**
 * A consumer of a consumer group: one bidirectional Pull stream (ConsumerGroupService.Pull).
 * Deliveries come in batches; acks and nacks go back on the same stream, and each settlement's
 * promise resolves when the server's SettleResult for it arrives (client/packetbus/_consumer.py
 * does the same in Python).
 *
 * A stream lost to the network or a server going away (UNAVAILABLE, or connect-node's CANCELED
 * "connection aborted" that neither the caller nor the client asked for) is opened again with
 * backoff, as subscriptions are (subscription.ts), and every settlement the lost stream did not
 * confirm is sent again first on the new one: safe, as the server answers a replayed settlement
 * OK (it records each delivery's last settlement) and settles deliveries another stream leased.
 * Deliveries handed out before the loss stay leased and may be settled on the new stream.
 */
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import type { Client as RpcClient } from "@connectrpc/connect";

import {
  type ConsumerGroupService,
  type Delivery,
  type Nacked,
  NackedSchema,
  PullRequestSchema,
  type PullRequest,
  Settlement,
  type SettleResult,
} from "./gen/packetbus/v1/consumer_group_service_pb.js";
import { Code, PacketbusError } from "./errors.js";
import { lostConnection, pause as pauseFor } from "./lost-connection.js";
import { Pushable } from "./pushable.js";

/** Flow control of one consumer: the server stops delivering while it holds this many
 * unsettled deliveries or bytes of them (0: the server's defaults, 1,000 and 64 MiB). */
export interface ConsumeOptions {
  readonly consumer: string;
  readonly maxOutstandingPackets?: number;
  readonly maxOutstandingBytes?: bigint;
  readonly maxBatchPackets?: number;
  /** Aborting ends the stream; pending settlements reject with CANCELLED. */
  readonly signal?: AbortSignal;
  /** How long the consumer keeps reopening a lost stream, in ms, counted from the first
   * failure in a row (default 60 000); then iteration throws the stream's error. */
  readonly reconnectWindowMs?: number;
}

/** How to nack: redeliver after `delaySeconds` (0: at once), with a `reason` kept with the
 * packet if it reaches the carcel. */
export interface NackOptions {
  readonly delaySeconds?: number;
  readonly reason?: string;
}

/** One leased delivery, with its settlements. */
export class ConsumedDelivery {
  constructor(
    readonly delivery: Delivery,
    private readonly consumer: Consumer,
  ) {}

  get deliveryId(): string {
    return this.delivery.deliveryId;
  }

  get deliveryCount(): number {
    return this.delivery.deliveryCount;
  }

  /** Ack: resolves with the server's SettleResult; rejects with PacketbusError (e.g.
   * FAILED_PRECONDITION when the lease ran out and another consumer got the packet). */
  ack(): Promise<SettleResult> {
    return this.consumer.settle("ack", this.deliveryId, { ackIds: [this.deliveryId] });
  }

  /** Nack: the packet is delivered again after the delay (or goes to the carcel after the
   * group's last attempt). Resolves with the SettleResult (its carcelId when it went there). */
  nack(options: NackOptions = {}): Promise<SettleResult> {
    const nack = create(NackedSchema, {
      deliveryId: this.deliveryId,
      delaySeconds: options.delaySeconds ?? 0,
      reason: options.reason ?? "",
    });
    return this.consumer.settle("nack", this.deliveryId, { nacks: [nack] });
  }

  /** Extend the lease by the group's ack deadline; resolves with the new lease. */
  extend(): Promise<SettleResult> {
    return this.consumer.settle("extend", this.deliveryId, { extendIds: [this.deliveryId] });
  }
}

/** What a settlement does; the server answers each with its kind (SettleResult.settlement). */
export type SettlementKind = "ack" | "nack" | "extend";

/** The fields of the PullRequest that carries one settlement, kept to send it again. */
interface SettleFields {
  readonly ackIds?: string[];
  readonly nacks?: Nacked[];
  readonly extendIds?: string[];
}

/** The most settlements one PullRequest carries: the server's Limits.max_batch_packets (1,000
 * by default) refuses more. Each pending settlement is one. */
const SETTLEMENTS_PER_REQUEST = 1000;

function emptyFields(): { ackIds: string[]; nacks: Nacked[]; extendIds: string[] } {
  return { ackIds: [], nacks: [], extendIds: [] };
}

interface Pending {
  readonly fields: SettleFields;
  readonly resolve: (result: SettleResult) => void;
  readonly reject: (error: unknown) => void;
}

const KIND_OF: Readonly<Partial<Record<Settlement, SettlementKind>>> = {
  [Settlement.ACK]: "ack",
  [Settlement.NACK]: "nack",
  [Settlement.EXTEND]: "extend",
};

/** Pauses between reopenings in a row, in ms: doubling from the first up to the last. */
const FIRST_PAUSE_MS = 100;
const LONGEST_PAUSE_MS = 5_000;

/** An async iterator of deliveries from one group; `close()` (or `break`) ends the stream. */
export class Consumer implements AsyncIterable<ConsumedDelivery> {
  /** The request side of the current stream (a new one per stream). */
  private requests = new Pushable<PullRequest>();
  /** Settlements sent and not yet answered, by "<kind> <delivery id>", oldest first: the
   * server answers each with its kind, so an ack never takes an extend's result. */
  private readonly pending = new Map<string, Pending[]>();
  private readonly abort = new AbortController();

  constructor(
    private readonly rpc: RpcClient<typeof ConsumerGroupService>,
    private readonly topic: string,
    private readonly group: string,
    private readonly options: ConsumeOptions,
    private readonly clientClosed: () => boolean = () => false,
  ) {
    options.signal?.addEventListener("abort", () => this.close(), { once: true });
  }

  /** Settlements sent and not yet confirmed by the server (0 once every one is answered). */
  get unconfirmed(): number {
    let count = 0;
    for (const waiting of this.pending.values()) {
      count += waiting.length;
    }
    return count;
  }

  /** Send a settlement on the stream; resolves when its result comes back (from this stream,
   * or the next one if this one is lost first). */
  settle(kind: SettlementKind, deliveryId: string, fields: SettleFields): Promise<SettleResult> {
    return new Promise<SettleResult>((resolve, reject) => {
      if (this.abort.signal.aborted) {
        reject(new PacketbusError(Code.Canceled, "the consumer is closed"));
        return;
      }
      const key = `${kind} ${deliveryId}`;
      const waiting = this.pending.get(key) ?? [];
      waiting.push({ fields, resolve, reject });
      this.pending.set(key, waiting);
      this.requests.push(create(PullRequestSchema, fields));
    });
  }

  /** End the stream; settlements still waiting for their result reject with CANCELLED. */
  close(): void {
    this.requests.end();
    this.abort.abort();
    this.failPending(new PacketbusError(Code.Canceled, "the consumer is closed"));
  }

  async *[Symbol.asyncIterator](): AsyncIterator<ConsumedDelivery> {
    // The response stream is read by a pump of its own, not by this generator: a caller that
    // awaits `ack()` inside its loop holds the generator suspended, and the SettleResult it
    // waits for must still be read.
    const deliveries = new Pushable<ConsumedDelivery | PacketbusError>();
    void this.pump(deliveries);
    try {
      for await (const next of deliveries) {
        if (next instanceof PacketbusError) {
          throw next;
        }
        yield next;
      }
    } finally {
      this.close();
    }
  }

  /** Open a stream, read it, and open another when it is lost, until closed or failed. */
  private async pump(deliveries: Pushable<ConsumedDelivery | PacketbusError>): Promise<void> {
    const window = this.options.reconnectWindowMs ?? 60_000;
    let failingSince: number | undefined;
    let pause = FIRST_PAUSE_MS;
    try {
      for (;;) {
        const requests = this.openRequests();
        try {
          for await (const response of this.rpc.pull(requests, { signal: this.abort.signal })) {
            failingSince = undefined;
            pause = FIRST_PAUSE_MS;
            for (const result of response.settled) {
              this.resolveSettled(result);
            }
            for (const delivery of response.deliveries) {
              deliveries.push(new ConsumedDelivery(delivery, this));
            }
          }
          // The server ended the stream without a status to report: open the next one.
          requests.end();
          if (this.abort.signal.aborted) {
            return;
          }
        } catch (error) {
          requests.end();
          if (this.abort.signal.aborted) {
            return;
          }
          let failure = PacketbusError.fromError(error, false);
          if (this.clientClosed()) {
            failure = new PacketbusError(Code.Canceled, "the client is closed", { cause: error });
          }
          const lost = lostConnection(failure.code);
          const now = Date.now();
          failingSince ??= now;
          if (this.clientClosed() || !lost || now - failingSince > window) {
            // Sent and never answered: each may have been applied.
            this.failPending(
              new PacketbusError(failure.code, failure.message, {
                outcomeUnknown: true,
                errorInfo: failure.errorInfo,
                cause: error,
              }),
            );
            deliveries.push(failure);
            return;
          }
          await pauseFor(pause, this.abort.signal);
          pause = Math.min(pause * 2, LONGEST_PAUSE_MS);
          if (this.abort.signal.aborted) {
            return;
          }
        }
      }
    } finally {
      deliveries.end();
    }
  }

  /** The request side of a new stream: the subscription, then every settlement not yet
   * confirmed (sent on a lost stream, or made while none was open), then what comes next. */
  private openRequests(): Pushable<PullRequest> {
    const requests = new Pushable<PullRequest>();
    this.requests.end();
    this.requests = requests;
    requests.push(
      create(PullRequestSchema, {
        subscription: {
          topic: this.topic,
          group: this.group,
          consumer: this.options.consumer,
          maxOutstandingPackets: this.options.maxOutstandingPackets ?? 0,
          maxOutstandingBytes: this.options.maxOutstandingBytes ?? 0n,
          maxBatchPackets: this.options.maxBatchPackets ?? 0,
        },
      }),
    );
    // At most SETTLEMENTS_PER_REQUEST settlements per request: the server refuses more
    // (INVALID_ARGUMENT, BATCH_TOO_LARGE; its Limits.max_batch_packets).
    let again = emptyFields();
    let count = 0;
    for (const waiting of this.pending.values()) {
      for (const { fields } of waiting) {
        again.ackIds.push(...(fields.ackIds ?? []));
        again.nacks.push(...(fields.nacks ?? []));
        again.extendIds.push(...(fields.extendIds ?? []));
        count += 1;
        if (count === SETTLEMENTS_PER_REQUEST) {
          requests.push(create(PullRequestSchema, again));
          again = emptyFields();
          count = 0;
        }
      }
    }
    if (count > 0) {
      requests.push(create(PullRequestSchema, again));
    }
    return requests;
  }

  private resolveSettled(result: SettleResult): void {
    const key = `${KIND_OF[result.settlement] ?? "?"} ${result.deliveryId}`;
    const waiting = this.pending.get(key);
    const first = waiting?.shift();
    if (waiting !== undefined && waiting.length === 0) {
      this.pending.delete(key);
    }
    if (first === undefined) {
      return;
    }
    const status = result.status;
    if (status !== undefined && status.code !== 0 /* OK */) {
      first.reject(PacketbusError.fromStatus(status));
    } else {
      first.resolve(result);
    }
  }

  private failPending(error: PacketbusError): void {
    for (const waiting of this.pending.values()) {
      waiting.forEach((p) => p.reject(error));
    }
    this.pending.clear();
  }
}
