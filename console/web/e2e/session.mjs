// @ts-check
// The browser side the steps share: how Chromium is launched, and a signed-in page per
// principal (`Session`).

/** @typedef {import("playwright-core").Browser} Browser */
/** @typedef {import("playwright-core").Page} Page */
import { join } from "node:path";

export const CHROMIUM = process.env.E2E_CHROMIUM ?? "/usr/bin/chromium";
// Without the background-networking flags Chromium phones home at start, and a closed
// network refuses it (slow starts, noise); the rest keep a CI run headless and quiet.
export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const TIMEOUT_MS = 20_000; // any one wait: generous for a loaded CI machine

/** What the steps share: the console, where screenshots go, a signed-in page per principal. */
export class Session {
  /**
   * @param {Browser} browser
   * @param {string} baseUrl the console's base URL (no trailing slash)
   * @param {string} screenshots the folder PNGs are written to
   */
  constructor(browser, baseUrl, screenshots) {
    this.browser = browser;
    this.baseUrl = baseUrl;
    this.screenshots = screenshots;
    /** @type {Map<string, Page>} */
    this.pages = new Map();
    /** @type {Page | null} the page of the running step, for a failure's screenshot */
    this.current = null;
  }

  /**
   * The page signed in as `who` (a name the test chooses), signing in with `token` on
   * first use: each principal has a browser context of its own (own cookies).
   * @param {string} who
   * @param {string} token a JWT the packetbus server accepts
   * @returns {Promise<Page>}
   */
  async pageAs(who, token) {
    let page = this.pages.get(who);
    if (page === undefined) {
      const context = await this.browser.newContext({
        baseURL: this.baseUrl,
        viewport: { width: 1280, height: 800 },
        acceptDownloads: true,
      });
      context.setDefaultTimeout(TIMEOUT_MS);
      page = await context.newPage();
      this.current = page;
      // The server authenticates callers: without a session the console offers sign-in.
      await page.goto("/");
      await page.getByRole("heading", { name: "Sign in", level: 1 }).waitFor();
      await page.getByLabel("Token").fill(token);
      await page.getByRole("button", { name: "Sign in" }).click();
      await page.getByText("Signed in as").waitFor();
      this.pages.set(who, page);
    }
    this.current = page;
    return page;
  }

  /**
   * Save a PNG of `page` as `<name>.png` in the screenshots folder; its path.
   * @param {Page} page
   * @param {string} name
   */
  async screenshot(page, name) {
    const path = join(this.screenshots, `${name}.png`);
    await page.screenshot({ path, fullPage: true });
    return path;
  }
}
