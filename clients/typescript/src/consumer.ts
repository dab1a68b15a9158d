/**
 * A consumer of a consumer group: one bidirectional Pull stream (ConsumerGroupService.Pull).
 * Deliveries come in batches; acks and nacks go back on the same stream, and each settlement's
 * promise resolves when the server's SettleResult for it arrives (client/packetbus/_consumer.py
 * does the same in Python).
 */
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import type { Client as RpcClient } from "@connectrpc/connect";

import {
  type ConsumerGroupService,
  type Delivery,
  NackedSchema,
  PullRequestSchema,
  type PullRequest,
  type SettleResult,
} from "./gen/packetbus/v1/consumer_group_service_pb.js";
import { Code, PacketbusError } from "./errors.js";
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
    return this.consumer.settle(this.deliveryId, { ackIds: [this.deliveryId] });
  }

  /** Nack: the packet is delivered again after the delay (or goes to the carcel after the
   * group's last attempt). Resolves with the SettleResult (its carcelId when it went there). */
  nack(options: NackOptions = {}): Promise<SettleResult> {
    const nack = create(NackedSchema, {
      deliveryId: this.deliveryId,
      delaySeconds: options.delaySeconds ?? 0,
      reason: options.reason ?? "",
    });
    return this.consumer.settle(this.deliveryId, { nacks: [nack] });
  }

  /** Extend the lease by the group's ack deadline; resolves with the new lease. */
  extend(): Promise<SettleResult> {
    return this.consumer.settle(this.deliveryId, { extendIds: [this.deliveryId] });
  }
}

interface Pending {
  readonly resolve: (result: SettleResult) => void;
  readonly reject: (error: unknown) => void;
}

/** An async iterator of deliveries from one group; `close()` (or `break`) ends the stream. */
export class Consumer implements AsyncIterable<ConsumedDelivery> {
  private readonly requests = new Pushable<PullRequest>();
  private readonly pending = new Map<string, Pending[]>();
  private readonly abort = new AbortController();

  constructor(
    private readonly rpc: RpcClient<typeof ConsumerGroupService>,
    private readonly topic: string,
    private readonly group: string,
    private readonly options: ConsumeOptions,
  ) {
    options.signal?.addEventListener("abort", () => this.close(), { once: true });
  }

  /** Send a settlement on the stream; resolves when its result comes back. */
  settle(deliveryId: string, fields: MessageInitShape<typeof PullRequestSchema>): Promise<SettleResult> {
    return new Promise<SettleResult>((resolve, reject) => {
      if (this.abort.signal.aborted) {
        reject(new PacketbusError(Code.Canceled, "the consumer is closed"));
        return;
      }
      const waiting = this.pending.get(deliveryId) ?? [];
      waiting.push({ resolve, reject });
      this.pending.set(deliveryId, waiting);
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

  private async pump(deliveries: Pushable<ConsumedDelivery | PacketbusError>): Promise<void> {
    this.requests.push(
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
    try {
      for await (const response of this.rpc.pull(this.requests, { signal: this.abort.signal })) {
        for (const result of response.settled) {
          this.resolveSettled(result);
        }
        for (const delivery of response.deliveries) {
          deliveries.push(new ConsumedDelivery(delivery, this));
        }
      }
    } catch (error) {
      if (!this.abort.signal.aborted) {
        const failure = PacketbusError.fromError(error, false);
        this.failPending(failure);
        deliveries.push(failure);
      }
    } finally {
      deliveries.end();
    }
  }

  private resolveSettled(result: SettleResult): void {
    const waiting = this.pending.get(result.deliveryId);
    const first = waiting?.shift();
    if (waiting !== undefined && waiting.length === 0) {
      this.pending.delete(result.deliveryId);
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
