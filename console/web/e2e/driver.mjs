// @ts-check
// The console's end-to-end browser driver: Debian's Chromium driven by playwright-core,
// one step at a time as tests/test_console_e2e.py asks over stdin/stdout.
//
//   E2E_CONSOLE_URL=http://127.0.0.1:8090 E2E_SCREENSHOTS=/tmp/shots node e2e/driver.mjs
//
// Protocol, one JSON object a line: the test writes {"id": n, "step": "name", "args": {...}};
// the driver answers {"id": n, "ok": true, "result": ...} or {"id": n, "ok": false,
// "error": "...", "screenshot": "<png of the page as it failed>"}. Steps are in
// scenarios.mjs (STEPS); stdout carries only answers, anything else goes to stderr. The
// driver exits when stdin closes, closing the browser.
import { createInterface } from "node:readline";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

import { STEPS } from "./scenarios.mjs";
import { CHROMIUM, CHROMIUM_ARGS, Session } from "./session.mjs";

async function main() {
  const baseUrl = (process.env.E2E_CONSOLE_URL ?? "").replace(/\/$/, "");
  const screenshots = process.env.E2E_SCREENSHOTS ?? "";
  if (!baseUrl || !screenshots) throw new Error("set E2E_CONSOLE_URL and E2E_SCREENSHOTS");
  mkdirSync(screenshots, { recursive: true });
  // launch() runs Chromium on a fresh, empty user-data-dir of its own (removed on close).
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  const session = new Session(browser, baseUrl, screenshots);
  const send = (/** @type {object} */ answer) => process.stdout.write(`${JSON.stringify(answer)}\n`);
  send({ id: 0, ok: true, result: { chromium: browser.version() } });
  try {
    for await (const line of createInterface({ input: process.stdin })) {
      if (!line.trim()) continue;
      /** @type {{id: number, step: string, args: Record<string, any>}} */
      const request = JSON.parse(line);
      const step = STEPS[request.step];
      try {
        if (step === undefined) throw new Error(`no step ${JSON.stringify(request.step)}`);
        send({ id: request.id, ok: true, result: (await step(session, request.args)) ?? null });
      } catch (exc) {
        const error = exc instanceof Error ? (exc.stack ?? exc.message) : String(exc);
        let screenshot = "";
        if (session.current !== null) {
          screenshot = await session.screenshot(session.current, `failed-${request.step}`).catch(() => "");
        }
        send({ id: request.id, ok: false, error, screenshot });
      }
    }
  } finally {
    await browser.close();
  }
}

await main();
