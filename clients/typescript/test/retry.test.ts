/**
 * The retrying interceptor on its own, on a real server and on a port nobody listens on, with a
 * counting interceptor inside it (one count per attempt): a definite refusal (INVALID_ARGUMENT)
 * is sent once; a call that never reached a server is sent again until its timeout, writes and
 * "once" calls included, and its error says the outcome is known (nothing was applied).
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import { Client, Code, PacketbusError } from "../src/index.js";
import { AgentService } from "../src/gen/packetbus/v1/agent_service_pb.js";
import { PacketService } from "../src/gen/packetbus/v1/packet_service_pb.js";
import { policyOf } from "../src/retry-policy.js";
import { DEFAULT_RETRY_SETTINGS, parseGrpcTimeout, retrying } from "../src/retrying.js";
import { freePort, startServer, type RunningServer } from "./server.js";

let server: RunningServer;

before(async () => {
  server = await startServer();
});

after(async () => {
  await server?.stop();
});

/** Clients of `target` whose calls are retried (budget `budgetMs`) and counted per attempt. */
function counted(target: string, budgetMs = 5_000) {
  const attempts: string[] = [];
  const count: Interceptor = (next) => async (request) => {
    attempts.push(request.method.name);
    return next(request);
  };
  const settings = { ...DEFAULT_RETRY_SETTINGS, initialBackoffMs: 20, maxBackoffMs: 100 };
  const transport = createGrpcTransport({
    baseUrl: `http://${target}`,
    interceptors: [retrying(settings, budgetMs, () => false), count],
  });
  return { attempts, packets: createClient(PacketService, transport), agents: createClient(AgentService, transport) };
}

async function failure(promise: Promise<unknown>): Promise<PacketbusError> {
  try {
    await promise;
  } catch (error) {
    return PacketbusError.fromError(error);
  }
  assert.fail("the call succeeded");
}

describe("retries", () => {
  test("each method's policy is the Python client's", () => {
    assert.equal(policyOf(PacketService.method.dispatch), "idempotent");
    assert.equal(policyOf(PacketService.method.getPacket), "read");
    assert.equal(policyOf(PacketService.method.getServerInfo), "read");
    assert.equal(policyOf(AgentService.method.registerAgent), "idempotent");
    assert.equal(policyOf(AgentService.method.deregisterAgent), "once");
  });

  test("grpc-timeout values are read in ms", () => {
    assert.equal(parseGrpcTimeout("250m"), 250);
    assert.equal(parseGrpcTimeout("5S"), 5_000);
    assert.equal(parseGrpcTimeout("2M"), 120_000);
    assert.equal(parseGrpcTimeout(null), undefined);
    assert.equal(parseGrpcTimeout("soon"), undefined);
  });

  test("INVALID_ARGUMENT is not retried, read or write", async () => {
    const { attempts, packets } = counted(server.target);
    const read = await failure(packets.getPacket({ trackingId: "" }, { timeoutMs: 5_000 }));
    assert.equal(read.code, Code.InvalidArgument);
    assert.equal(read.outcomeUnknown, false);
    const write = await failure(packets.dispatch({ packets: [] }, { timeoutMs: 5_000 }));
    assert.equal(write.code, Code.InvalidArgument);
    assert.equal(write.outcomeUnknown, false);
    assert.deepEqual(attempts, ["GetPacket", "Dispatch"]);
  });

  test("a call no server receives is retried until its timeout; the outcome is known", async () => {
    const { attempts, packets, agents } = counted(`127.0.0.1:${await freePort()}`);
    const started = Date.now();
    const write = await failure(packets.dispatch({ packets: [] }, { timeoutMs: 1_000 }));
    const spent = Date.now() - started;
    assert.ok(write.code === Code.Unavailable || write.code === Code.DeadlineExceeded, write.codeName);
    assert.equal(write.outcomeUnknown, false); // connection refused: never sent
    assert.ok(spent >= 700 && spent < 3_000, `${spent} ms`);
    const dispatches = attempts.length;
    assert.ok(dispatches >= 3, `${dispatches} attempts`);
    // A call that a repeat would not answer the same is still retried when never sent.
    const once = await failure(agents.deregisterAgent({ agentId: "nobody" }, { timeoutMs: 500 }));
    assert.equal(once.outcomeUnknown, false);
    assert.ok(attempts.length - dispatches >= 2, `${attempts.length - dispatches} attempts`);
    assert.ok(attempts.slice(dispatches).every((name) => name === "DeregisterAgent"));
  });

  test("a client's call with no timeout is retried for defaultTimeoutMs, then UNAVAILABLE", async () => {
    const gone = await startServer();
    const retry = { initialBackoffMs: 20, maxBackoffMs: 100 };
    const lost = await Client.connect(gone.target, { defaultTimeoutMs: 800, retry });
    try {
      await gone.stop(); // for good: every attempt finds the port closed
      const started = Date.now();
      const error = await failure(lost.dispatchBatch([{ topic: "ts.retry", origin: "ts-retry" }]));
      const spent = Date.now() - started;
      assert.equal(error.code, Code.Unavailable);
      assert.equal(error.outcomeUnknown, false);
      assert.ok(spent >= 650 && spent < 3_000, `${spent} ms`);
    } finally {
      lost.close();
    }
  });
});
