/**
 * Task queues against a real `packetbus serve`: post (idempotent by task id), claim under a
 * lease with a fencing token, settle; a claim whose lease ran out and was claimed again cannot
 * be settled with its stale token (FAILED_PRECONDITION, as the server's _task_settling says).
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";

import { Client, Code, PacketbusError, TaskStatus } from "../src/index.js";
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

async function rejectsWith(promise: Promise<unknown>, codeName: string): Promise<PacketbusError> {
  let caught: PacketbusError | undefined;
  await assert.rejects(promise, (error) => {
    assert.ok(error instanceof PacketbusError, String(error));
    assert.equal(error.codeName, codeName, error.message);
    caught = error;
    return true;
  });
  return caught!;
}

describe("task queues", () => {
  test("post, claim, complete: the task is COMPLETED with its result, posting again is a retry", async () => {
    const queue = bus.taskQueue(`ts-tasks-${randomUUID()}`);
    const posted = await queue.post({ id: "t-1", description: "summarize", priority: 5 }, { origin: "ts-planner" });
    assert.equal(posted.status, TaskStatus.QUEUED);
    assert.equal(posted.priority, 5);
    const claimed = await queue.claim("ts-worker", { leaseSeconds: 30 });
    assert.ok(claimed !== undefined);
    assert.equal(claimed.taskId, "t-1");
    assert.equal(claimed.task?.description, "summarize");
    assert.ok(claimed.fencingToken > 0n);
    assert.equal(await queue.claim("ts-worker-2"), undefined);
    await claimed.heartbeat(60);
    await claimed.complete({ answer: 42 }, "done");
    const state = await queue.get("t-1");
    assert.equal(state.status, TaskStatus.COMPLETED);
    const results = await queue.results("t-1");
    assert.deepEqual(
      results.map((r) => [r.worker, r.completed, r.result, r.summary]),
      [["ts-worker", true, { answer: 42 }, "done"]],
    );
    await claimed.complete({ answer: 42 }, "done"); // the same completion again: OK (a retry)
    await rejectsWith(claimed.complete({ answer: 43 }, "done"), "ALREADY_EXISTS");
  });

  test("a lease that ran out and was claimed again: the stale token is FAILED_PRECONDITION", async () => {
    const queue = bus.taskQueue(`ts-lease-${randomUUID()}`);
    await queue.post({ id: "slow", description: "takes too long" }, { origin: "ts-planner" });
    const first = await queue.claim("ts-worker-a", { leaseSeconds: 1 });
    assert.ok(first !== undefined);
    let second;
    for (let n = 0; second === undefined && n < 50; n++) {
      await sleep(200);
      second = await queue.claim("ts-worker-b", { leaseSeconds: 30 });
    }
    assert.ok(second !== undefined, "the expired task was never claimable again");
    assert.equal(second.taskId, "slow");
    assert.ok(second.fencingToken > first.fencingToken);
    const stale = await rejectsWith(first.complete({ by: "a" }), "FAILED_PRECONDITION");
    assert.equal(stale.code, Code.FailedPrecondition);
    assert.match(stale.message, new RegExp(`fencing token ${first.fencingToken} no longer holds task 'slow'`));
    await rejectsWith(first.heartbeat(), "FAILED_PRECONDITION");
    await rejectsWith(first.fail("late"), "FAILED_PRECONDITION");
    await second.complete({ by: "b" });
    const state = await queue.get("slow");
    assert.equal(state.status, TaskStatus.COMPLETED);
    assert.equal(state.claims, 2);
    assert.equal(state.failures, 1); // the lease that ran out
    const completed = (await queue.results("slow")).filter((r) => r.completed);
    assert.deepEqual(
      completed.map((r) => [r.worker, r.fencingToken, r.result]),
      [["ts-worker-b", second.fencingToken, { by: "b" }]],
    );
  });

  test("a failure queues the task again; the last one carcels it", async () => {
    const queue = bus.taskQueue(`ts-fail-${randomUUID()}`);
    await queue.post({ id: "flaky" }, { origin: "ts-planner", maxAttempts: 2 });
    const first = await queue.claim("ts-worker");
    const failed = await first!.fail("boom");
    assert.equal(failed.status, TaskStatus.QUEUED);
    const second = await queue.claim("ts-worker");
    const carceled = await second!.fail("boom again");
    assert.equal(carceled.status, TaskStatus.CARCELED);
    assert.notEqual(carceled.carcelId, "");
    assert.deepEqual(
      (await queue.tasks(TaskStatus.CARCELED)).map((t) => t.taskId),
      ["flaky"],
    );
  });

  test("a task without an id is INVALID_ARGUMENT with its field violation", async () => {
    const queue = bus.taskQueue(`ts-bad-${randomUUID()}`);
    const error = await rejectsWith(queue.post({ description: "no id" }, { origin: "ts-planner" }), "INVALID_ARGUMENT");
    assert.deepEqual(
      error.fieldViolations.map((v) => [v.field, v.reason]),
      [["packet.task.id", "REQUIRED"]],
    );
  });
});
