import { describe, expect, it } from "vitest";

import {
  type Hop,
  type QueueSummary,
  claimsOf,
  counterpartOf,
  eventLine,
  priorityRows,
  queuePath,
  statusWord,
  tasksQuery,
} from "../src/queues";

const hop = (sequence: number, action: string, extra: Partial<Hop> = {}): Hop => ({
  sequence,
  action,
  actor: "server-1",
  counterpart: "",
  reason: "",
  principal: "",
  occurredAt: `2026-01-01T00:00:0${sequence}Z`,
  ...extra,
});

describe("queue counts", () => {
  it("puts each priority on one row, highest first, a column per status", () => {
    const summary: QueueSummary = {
      queue: "jobs",
      tasks: 6,
      unclassified: 0,
      byStatus: {},
      counts: [
        { status: "TASK_STATUS_QUEUED", priority: 1, tasks: 2 },
        { status: "TASK_STATUS_QUEUED", priority: 5, tasks: 1 },
        { status: "TASK_STATUS_CLAIMED", priority: 5, tasks: 1 },
        { status: "TASK_STATUS_CARCELED", priority: -2, tasks: 2 },
      ],
    };
    expect(priorityRows(summary)).toEqual([
      { priority: 5, byStatus: { queued: 1, claimed: 1, completed: 0, carceled: 0 }, total: 2 },
      { priority: 1, byStatus: { queued: 2, claimed: 0, completed: 0, carceled: 0 }, total: 2 },
      { priority: -2, byStatus: { queued: 0, claimed: 0, completed: 0, carceled: 2 }, total: 2 },
    ]);
  });

  it("names statuses as words", () => {
    expect(statusWord("TASK_STATUS_CARCELED")).toBe("carceled");
    expect(statusWord("TASK_STATUS_UNSPECIFIED")).toBe("");
    expect(statusWord(undefined)).toBe("");
  });
});

describe("a task's claims", () => {
  it("are its claimed hops, each ended by the settling hop after it", () => {
    const history = [
      hop(0, "received"),
      hop(1, "claimed", { counterpart: "queue:jobs worker:w1" }),
      hop(2, "failed", { counterpart: "queue:jobs worker:w1", reason: "network down" }),
      hop(4, "completed", { counterpart: "queue:jobs worker:w2" }),
      hop(3, "claimed", { counterpart: "queue:jobs worker:w2" }),
      hop(5, "claimed", { counterpart: "queue:jobs worker:w3" }),
    ];
    expect(claimsOf(history)).toEqual([
      { number: 1, worker: "w1", at: "2026-01-01T00:00:01Z", outcome: "failed", reason: "network down" },
      { number: 2, worker: "w2", at: "2026-01-01T00:00:03Z", outcome: "completed", reason: "" },
      { number: 3, worker: "w3", at: "2026-01-01T00:00:05Z", outcome: "", reason: "" },
    ]);
  });

  it("reads counterparts as kind:name pairs, names holding colons too", () => {
    expect(counterpartOf("queue:a/b:c worker:w-1")).toEqual({ queue: "a/b:c", worker: "w-1" });
    expect(counterpartOf("")).toEqual({});
  });
});

describe("task events and requests", () => {
  it("reads an event as a line", () => {
    const base = { taskId: "t-1", fencingToken: "0", cursor: "1-0", at: null };
    expect(
      eventLine({ ...base, oldStatus: "TASK_STATUS_UNSPECIFIED", newStatus: "TASK_STATUS_QUEUED", actor: "", reason: "posted" }),
    ).toBe("t-1: posted, queued");
    expect(
      eventLine({
        ...base,
        oldStatus: "TASK_STATUS_CLAIMED",
        newStatus: "TASK_STATUS_QUEUED",
        actor: "server",
        reason: "lease expired",
      }),
    ).toBe("t-1: claimed → queued by server: lease expired");
  });

  it("escapes a queue's parts but keeps its slashes, and builds the list query", () => {
    expect(queuePath("team a/jobs?x")).toBe("/api/queues/team%20a/jobs%3Fx");
    expect(tasksQuery("", "")).toBe("");
    expect(tasksQuery("claimed", "v1.tasks.x+y")).toBe("?status=claimed&pageToken=v1.tasks.x%2By");
  });
});
