// @ts-check
// The steps tests/test_console_e2e.py asks the driver for, by name (`STEPS`). Each takes
// the session and the test's arguments ({who, token} name the principal it acts as, the
// rest are its own), waits on what the page shows (Playwright's auto-waiting locators,
// never a fixed sleep), throws when the page does not show what it should, and answers
// what it saw so the test can compare it with packetbus's own state.
import { NOT_PAGES, PAGES, byLink, open } from "./pages.mjs";

/** @typedef {import("playwright-core").Page} Page */
/** @typedef {import("./session.mjs").Session} Session */
/** @typedef {Record<string, any>} Args */

const STALE_TIMEOUT_MS = 40_000; // heartbeat deadline + the server's sweep + the page's 5 s tick

/**
 * @param {Session} session
 * @param {Args} args
 */
function pageOf(session, args) {
  return session.pageAs(String(args.who), String(args.token));
}

/**
 * @param {Page} page
 * @param {string} path
 */
async function openPath(page, path) {
  const spec = PAGES.find((p) => p.path === path);
  if (spec === undefined) throw new Error(`no page ${path} in pages.mjs`);
  await open(page, spec);
}

/**
 * @param {unknown} condition
 * @param {string} message
 * @returns {asserts condition}
 */
function check(condition, message) {
  if (!condition) throw new Error(message);
}

/** The accessible text of the focused element (its text, or its label for a field). */
function focusedName(/** @type {Page} */ page) {
  return page.evaluate(() => {
    const el = document.activeElement;
    if (el === null || el === document.body) return "";
    const labelled = el.id ? document.querySelector(`label[for="${el.id}"]`) : null;
    return (labelled?.textContent ?? el.textContent ?? "").replace(/\s+/g, " ").trim();
  });
}

/**
 * Press Tab until the focused element's name is `name` (at most `most` presses); the
 * names passed on the way, `name` last. Throws when it is not reached.
 * @param {Page} page
 * @param {string} name
 * @param {number} most
 */
async function tabTo(page, name, most) {
  const seen = [];
  for (let i = 0; i < most; i++) {
    await page.keyboard.press("Tab");
    const now = await focusedName(page);
    seen.push(now);
    if (now === name) return seen;
  }
  throw new Error(`Tab never reached ${JSON.stringify(name)}; focus went ${JSON.stringify(seen)}`);
}

/** @type {Record<string, (session: Session, args: Args) => Promise<unknown>>} */
export const STEPS = {
  /** Every page in the navigation: heading, data loaded, no error shown, a screenshot. */
  async smokeEveryPage(session, args) {
    const page = await pageOf(session, args);
    const nav = page.getByRole("navigation", { name: "Pages" }).getByRole("link");
    const links = (await nav.allTextContents()).map((text) => text.trim());
    const missing = PAGES.filter((spec) => !links.includes(spec.link)).map((spec) => spec.link);
    check(missing.length === 0, `pages.mjs lists pages the navigation lacks: ${missing.join(", ")}`);
    const shown = [];
    for (const link of links.filter((name) => !NOT_PAGES.has(name))) {
      const spec = byLink(link);
      await open(page, spec);
      const alerts = await page.getByRole("alert").allTextContents();
      check(alerts.length === 0, `${spec.path} shows an error: ${alerts.join(" / ")}`);
      const current = await page.locator("nav a[aria-current=page]").textContent();
      check(current === link, `${spec.path}: the navigation marks ${current} as the current page`);
      shown.push({ path: spec.path, screenshot: await session.screenshot(page, `page${spec.path.replace(/\//g, "-")}`) });
    }
    return shown;
  },

  /** The Agents page shows `agent` live; the page is marked to prove later it was not reloaded. */
  async watchAgent(session, args) {
    const page = await pageOf(session, args);
    await openPath(page, "/agents");
    const row = page.locator(`tr[data-agent="${args.agent}"]`);
    await row.locator(".badge", { hasText: /^live$/ }).waitFor();
    await page.evaluate((agent) => {
      /** @type {any} */ (window).e2eWatching = { agent, since: Date.now() };
    }, String(args.agent));
    return { cells: await row.locator("th, td").allTextContents() };
  },

  /** The same page, never reloaded, comes to show `agent` stale. */
  async expectAgentStale(session, args) {
    const page = await pageOf(session, args);
    const row = page.locator(`tr[data-agent="${args.agent}"]`);
    await row.locator(".badge", { hasText: /^stale$/ }).waitFor({ timeout: STALE_TIMEOUT_MS });
    const watching = await page.evaluate(() => /** @type {any} */ (window).e2eWatching ?? null);
    check(watching?.agent === args.agent, "the Agents page was reloaded: it lost its mark");
    // Read at once: one TTL later the server removes a stale agent (a LEFT event).
    const cells = await row.locator("th, td").allTextContents();
    const rowClass = await row.getAttribute("class");
    const status = (await page.getByText(/^Updates: /).textContent()) ?? "";
    const screenshot = await session.screenshot(page, "agents-stale");
    // Heartbeats send no event: once the page has judged liveness `healthyAfterMs` past
    // the listing it loaded (every listed deadline passed by then), the agents that kept
    // heartbeating must still show live.
    await page.waitForFunction(
      (after) => Number(document.querySelector("table[data-now]")?.getAttribute("data-now")) > after,
      watching.since + Number(args.healthyAfterMs),
    );
    /** @type {Record<string, string>} */
    const healthy = {};
    for (const agent of /** @type {string[]} */ (args.healthy)) {
      healthy[agent] = (await page.locator(`tr[data-agent="${agent}"] .badge`).textContent()) ?? "";
    }
    return { cells, status, rowClass, healthy, screenshot };
  },

  /** Governance: the held packet with Approve, approved from the page. */
  async approveHeld(session, args) {
    const page = await pageOf(session, args);
    await openPath(page, "/governance");
    const id = String(args.trackingId);
    const row = page.locator(`tr[data-tracking-id="${id}"]`);
    const approve = row.getByRole("button", { name: `Approve ${id}`, exact: true });
    await approve.waitFor();
    const screenshot = await session.screenshot(page, "governance-held");
    const cells = await rowCells(row, 1);
    await approve.click();
    await page.getByRole("status").filter({ hasText: `Approved ${id}.` }).waitFor();
    await row.waitFor({ state: "detached" });
    return { cells, screenshot };
  },

  /** Governance as a principal without packets.approve: no buttons, and the API refuses. */
  async refusedApproval(session, args) {
    const page = await pageOf(session, args);
    await openPath(page, "/governance");
    const id = String(args.trackingId);
    const row = page.locator(`tr[data-tracking-id="${id}"]`);
    await row.waitFor();
    const buttons = await row.getByRole("button").count();
    const actions = (await row.locator("td").last().textContent()) ?? "";
    const screenshot = await session.screenshot(page, "governance-not-permitted");
    // What a person could do anyway from the browser's console: the API call itself,
    // with the CSRF header, as the page would make it.
    const answer = await page.evaluate(
      async ({ id, topic }) => {
        const response = await fetch(`/api/held/${encodeURIComponent(id)}/approve`, {
          method: "POST",
          headers: { "X-Packetbus-Console": "1", "Content-Type": "application/json" },
          body: JSON.stringify({ topic }),
        });
        return { status: response.status, body: await response.json() };
      },
      { id, topic: String(args.topic) },
    );
    return { buttons, actions, screenshot, answer };
  },

  /** Carcel: the entry with Requeue, requeued from the page. */
  async requeueCarcel(session, args) {
    const page = await pageOf(session, args);
    await openPath(page, "/carcel");
    const id = String(args.entryId);
    // Only the test's topic: the store may hold other tests' entries.
    await page.getByLabel("Topic").fill(String(args.topic));
    await page.getByRole("button", { name: "Filter" }).click();
    const row = page.locator(`tr[data-entry="${id}"]`);
    const requeue = row.getByRole("button", { name: `Requeue ${id}`, exact: true });
    await requeue.waitFor();
    // The filtered view arrives live and may redraw the row meanwhile: read its cells
    // once they are all there.
    const cells = await rowCells(row, 6);
    const screenshot = await session.screenshot(page, "carcel-entry");
    await requeue.click();
    await page.getByRole("status").filter({ hasText: `Requeued ${id}.` }).waitFor();
    await row.waitFor({ state: "detached" });
    return { cells, screenshot };
  },

  /** Custody: a packet's chain hop by hop, and its export line downloaded to `saveAs`. */
  async custodyChain(session, args) {
    const page = await pageOf(session, args);
    await openPath(page, "/custody");
    const id = String(args.trackingId);
    await page.getByLabel("Tracking id").fill(id);
    await page.getByRole("button", { name: "Show chain" }).click();
    const table = page.getByRole("table", { name: `Chain of custody of ${id}` });
    await table.waitFor();
    const status = (await page.getByRole("status").textContent()) ?? "";
    const hops = [];
    for (const row of await table.locator("tbody tr").all()) {
      const cells = (await row.locator("th, td").allTextContents()).map((text) => text.trim());
      hops.push({ verdictAttr: await row.getAttribute("data-verdict"), cells });
    }
    const screenshot = await session.screenshot(page, "custody-chain");
    const [download] = await Promise.all([
      page.waitForEvent("download"),
      page.getByRole("link", { name: "Download the export line" }).click(),
    ]);
    const failure = await download.failure();
    if (failure !== null) throw new Error(`download failed: ${failure}`);
    await download.saveAs(String(args.saveAs));
    return { status, hops, screenshot, filename: download.suggestedFilename() };
  },

  /**
   * Keyboard only: from the top of the page, Tab through the skip link and the navigation
   * to Governance and Enter; Tab to the held packet's Approve, Enter. Then, each page
   * loaded afresh: Tab to the carcel entry's Requeue, Enter; Tab to Custody's tracking
   * id field, type it, Enter.
   */
  async keyboardActions(session, args) {
    const page = await pageOf(session, args);
    const id = String(args.trackingId);
    await page.goto("/agents");
    await page.getByText(/^Updates: live\./).waitFor();
    const toNav = await tabTo(page, "Governance", 10);
    await page.keyboard.press("Enter");
    await page.waitForURL((url) => url.pathname === "/governance");
    await page.getByRole("button", { name: `Approve ${id}`, exact: true }).waitFor();
    const toApprove = await tabTo(page, `Approve ${id}`, 150);
    await page.keyboard.press("Enter");
    await page.getByRole("status").filter({ hasText: `Approved ${id}.` }).waitFor();

    const entry = String(args.entryId);
    await page.goto("/carcel");
    await page.getByRole("button", { name: `Requeue ${entry}`, exact: true }).waitFor();
    const toRequeue = await tabTo(page, `Requeue ${entry}`, 150);
    await page.keyboard.press("Enter");
    await page.getByRole("status").filter({ hasText: `Requeued ${entry}.` }).waitFor();

    await page.goto("/custody");
    await page.getByLabel("Tracking id").waitFor();
    const toCustody = await tabTo(page, "Tracking id", 20);
    await page.keyboard.type(id);
    await page.keyboard.press("Enter");
    await page.getByRole("table", { name: `Chain of custody of ${id}` }).waitFor();
    const custody = (await page.getByRole("status").textContent()) ?? "";
    return { toNav, toApprove, toRequeue, toCustody, custody };
  },
};

/**
 * The text of `row`'s cells once it has at least `least` of them (a live view may redraw
 * the row between a wait and a read); throws after 10 s.
 * @param {import("playwright-core").Locator} row
 * @param {number} least
 * @returns {Promise<string[]>}
 */
async function rowCells(row, least) {
  const until = Date.now() + 10_000;
  for (;;) {
    const cells = await row.locator("th, td").allTextContents();
    if (cells.length >= least) return cells;
    if (Date.now() > until) throw new Error(`the row has ${cells.length} cells, not ${least}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}
