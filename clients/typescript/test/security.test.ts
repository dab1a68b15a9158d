/**
 * Connection security against a real `packetbus serve` with TLS (certificates made here with
 * openssl): a client trusting the server's CA dispatches; one that does not cannot connect;
 * bearer JWTs (signed here with node:crypto) are checked; mutual TLS admits a client with a
 * certificate the server's client CA signed and refuses one without.
 */
import assert from "node:assert/strict";
import { generateKeyPairSync, randomUUID, sign, type KeyObject } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { Client, Code, PacketbusError, SpeechAct, tokenFromEnv } from "../src/index.js";
import { tlsSessionOptions } from "../src/security.js";
import { makeCerts, type TestCerts } from "./certs.js";
import { startServer, type RunningServer } from "./server.js";

const ISSUER = "https://issuer.example.org";
const AUDIENCE = "packetbus";
const SUBJECT = "spiffe://example.org/agent/ts-planner";

let certs: TestCerts;
let jwtKey: KeyObject;
let keyDir: string;

/** A JWT signed (EdDSA) by `key`, with sub, iss, aud and a 5-minute exp unless `claims` differ. */
function jwt(key: KeyObject, claims: Record<string, unknown> = {}): string {
  const now = Math.floor(Date.now() / 1000);
  const encode = (value: object) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const body = { sub: SUBJECT, iss: ISSUER, aud: AUDIENCE, iat: now, exp: now + 300, ...claims };
  const signing = `${encode({ alg: "EdDSA", typ: "JWT" })}.${encode(body)}`;
  return `${signing}.${sign(null, Buffer.from(signing), key).toString("base64url")}`;
}

function finding(topic: string) {
  return {
    topic,
    origin: "ts-secure",
    speechAct: SpeechAct.INFORM,
    contents: { case: "finding" as const, value: { claim: "over TLS", confidence: 0.5 } },
  };
}

async function rejectsWith(promise: Promise<unknown>, code: Code, reason?: string): Promise<void> {
  await assert.rejects(promise, (error) => {
    assert.ok(error instanceof PacketbusError, String(error));
    assert.equal(error.codeName, new PacketbusError(code, "").codeName, error.message);
    if (reason !== undefined) {
      assert.equal(error.errorInfo?.reason, reason);
    }
    return true;
  });
}

before(() => {
  certs = makeCerts("spiffe://example.org/agent/ts-worker");
  keyDir = mkdtempSync(join(tmpdir(), "packetbus-ts-jwt-"));
  const pair = generateKeyPairSync("ed25519");
  jwtKey = pair.privateKey;
  writeFileSync(join(keyDir, "jwt.pem"), pair.publicKey.export({ format: "pem", type: "spki" }));
});

after(() => {
  certs?.remove();
  rmSync(keyDir, { recursive: true, force: true });
});

describe("TLS with bearer tokens", () => {
  let server: RunningServer;

  before(async () => {
    server = await startServer([
      "--tls-cert", certs.serverCert, "--tls-key", certs.serverKey,
      "--jwt-public-key", join(keyDir, "jwt.pem"), "--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE,
    ]);
  });

  after(async () => {
    await server?.stop();
  });

  test("a client trusting the CA, with a token, dispatches over TLS", async () => {
    const bus = await Client.connect(server.target, { tls: { caFile: certs.caFile }, token: jwt(jwtKey) });
    try {
      const topic = `ts-tls-${randomUUID()}`;
      const outcome = await bus.dispatch(finding(topic));
      assert.equal(outcome.receipt?.topic, topic);
      assert.match(outcome.receipt?.cursor ?? "", /^\d+-\d+$/);
    } finally {
      bus.close();
    }
  });

  test("a client without the CA cannot connect: UNAVAILABLE", async () => {
    await rejectsWith(Client.connect(server.target, { tls: true, token: jwt(jwtKey), connectTimeoutMs: 5000 }), Code.Unavailable);
  });

  test("no token is UNAUTHENTICATED (CREDENTIAL_MISSING); a token for another audience too", async () => {
    await rejectsWith(Client.connect(server.target, { tls: { caFile: certs.caFile }, token: undefined }), Code.Unauthenticated, "CREDENTIAL_MISSING");
    await rejectsWith(
      Client.connect(server.target, { tls: { caFile: certs.caFile }, token: jwt(jwtKey, { aud: "someone-else" }) }),
      Code.Unauthenticated,
    );
  });

  test("a token from a file (PACKETBUS_TOKEN_FILE) is read again when it changes", async () => {
    const file = join(keyDir, "token");
    writeFileSync(file, "not-a-jwt\n");
    const token = tokenFromEnv({ PACKETBUS_TOKEN_FILE: file });
    assert.ok(typeof token === "function");
    assert.equal(token(), "not-a-jwt");
    const bus = Client.connect(server.target, { tls: { caFile: certs.caFile }, token });
    await rejectsWith(bus, Code.Unauthenticated);
    writeFileSync(file, `${jwt(jwtKey)}\n`);
    const good = await Client.connect(server.target, { tls: { caFile: certs.caFile }, token });
    try {
      assert.equal((await good.dispatch(finding(`ts-tokfile-${randomUUID()}`))).receipt?.topic.startsWith("ts-tokfile-"), true);
    } finally {
      good.close();
    }
  });
});

describe("mutual TLS", () => {
  let server: RunningServer;

  before(async () => {
    server = await startServer([
      "--tls-cert", certs.serverCert, "--tls-key", certs.serverKey, "--tls-client-ca", certs.caFile,
    ]);
  });

  after(async () => {
    await server?.stop();
  });

  test("a client with a certificate the client CA signed dispatches", async () => {
    const bus = await Client.connect(server.target, {
      tls: { caFile: certs.caFile, certFile: certs.clientCert, keyFile: certs.clientKey },
    });
    try {
      const topic = `ts-mtls-${randomUUID()}`;
      assert.equal((await bus.dispatch(finding(topic))).receipt?.topic, topic);
    } finally {
      bus.close();
    }
  });

  test("a client without a certificate is refused", async () => {
    await rejectsWith(Client.connect(server.target, { tls: { caFile: certs.caFile }, connectTimeoutMs: 5000 }), Code.Unavailable);
  });
});

describe("settings", () => {
  test("a certificate without its key, or a PEM and a file for one part, is a TypeError", () => {
    assert.throws(() => tlsSessionOptions({ certFile: "client.pem" }), TypeError);
    assert.throws(() => tlsSessionOptions({ ca: "x", caFile: "ca.pem" }), TypeError);
  });

  test("a token in plain text to a non-loopback target is refused before connecting", async () => {
    await assert.rejects(Client.connect("192.0.2.1:50051", { tls: false, token: "t" }), TypeError);
  });
});
