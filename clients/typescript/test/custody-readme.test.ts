/**
 * The README's TypeScript custody example, run as written (as a module inside this package, so
 * "@packetbus/client" resolves to it) against a real server.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { startServer, type RunningServer } from "./server.js";

const README = fileURLToPath(new URL("../../../../README.md", import.meta.url));
const SCRIPT = fileURLToPath(new URL("../readme-custody.mjs", import.meta.url));

let server: RunningServer;

before(async () => {
  server = await startServer();
});

after(async () => {
  rmSync(SCRIPT, { force: true });
  await server?.stop();
});

test("the README's custody example verifies a signed packet offline and sees a changed byte", async () => {
  const text = readFileSync(README, "utf8");
  const block = /<!-- readme:typescript-custody -->\n```\w*\n([\s\S]*?)```/.exec(text)?.[1];
  assert.ok(block !== undefined, "no readme:typescript-custody block in README.md");
  writeFileSync(SCRIPT, block);
  const { stdout } = await promisify(execFile)(process.execPath, [SCRIPT], {
    env: { ...process.env, PACKETBUS_TARGET: server.target },
    timeout: 60_000,
  });
  assert.deepEqual(stdout.trim().split("\n"), [
    "verified true originated OK, received OK, dispatched OK head OK",
    "tampered false CONTENT_DIGEST_MISMATCH, CONTENT_DIGEST_MISMATCH, CONTENT_DIGEST_MISMATCH",
  ]);
});
