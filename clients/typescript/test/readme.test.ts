/**
 * The README's TypeScript quickstart, run as written (as a module inside this package, so
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
const SCRIPT = fileURLToPath(new URL("../readme-quickstart.mjs", import.meta.url));

let server: RunningServer;

before(async () => {
  server = await startServer();
});

after(async () => {
  rmSync(SCRIPT, { force: true });
  await server?.stop();
});

/** The code block right after `<!-- readme:NAME -->`. */
function readmeBlock(name: string): string {
  const text = readFileSync(README, "utf8");
  const match = new RegExp(`<!-- readme:${name} -->\\n\`\`\`\\w*\\n([\\s\\S]*?)\`\`\``).exec(text);
  assert.ok(match?.[1] !== undefined, `no readme:${name} block in README.md`);
  return match[1];
}

test("the README's TypeScript quickstart dispatches a finding and reads it back", async () => {
  writeFileSync(SCRIPT, readmeBlock("typescript-quickstart"));
  const { stdout } = await promisify(execFile)(process.execPath, [SCRIPT], {
    env: { ...process.env, PACKETBUS_TARGET: server.target },
    timeout: 60_000,
  });
  const lines = stdout.trim().split("\n");
  assert.equal(lines.length, 2, stdout);
  const stored = /^stored ([0-9a-f-]{36}) at (\d+-\d+)$/.exec(lines[0]!);
  assert.ok(stored !== null, stdout);
  assert.equal(lines[1], `${stored[2]} Q3 revenue follows the policy change`);
});

test("the README's TypeScript task and inbox example completes a task and gets a reply", async () => {
  writeFileSync(SCRIPT, readmeBlock("typescript-work"));
  const { stdout } = await promisify(execFile)(process.execPath, [SCRIPT], {
    env: { ...process.env, PACKETBUS_TARGET: server.target },
    timeout: 60_000,
  });
  assert.deepEqual(stdout.trim().split("\n"), ["completed job-1", "helper-1 says job-1 is done"]);
});
