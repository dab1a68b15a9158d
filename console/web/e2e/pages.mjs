// @ts-check
// Every page of the console, for the smoke check (scenarios.mjs `smokeEveryPage`): its
// navigation link's name and what shows once it has loaded. A new page is one entry here;
// the smoke check fails for a link in the navigation that has none.

/** @typedef {import("playwright-core").Page} Page */
/** @typedef {import("playwright-core").Locator} Locator */

/**
 * @typedef {object} PageSpec
 * @property {string} path the page's own path
 * @property {string} link its link's name in the navigation
 * @property {string} heading its h1
 * @property {(page: Page) => Locator} ready visible once its data has loaded
 */

/** @type {PageSpec[]} */
export const PAGES = [
  {
    path: "/overview",
    link: "Overview",
    heading: "Overview",
    // Its metrics stream is open (the e2e console scrapes the server's /metrics).
    ready: (page) => page.getByText(/^Updates: live\./),
  },
  {
    path: "/agents",
    link: "Agents",
    heading: "Agents",
    // The membership stream is open and the registry listed.
    ready: (page) => page.getByText(/^Updates: live\./),
  },
  {
    path: "/topics",
    link: "Topics",
    heading: "Topics",
    // The topic list's live stream is open.
    ready: (page) => page.getByText(/^Updates: live\./),
  },
  {
    path: "/queues",
    link: "Task queues",
    heading: "Task queues",
    // The queue list's live stream is open.
    ready: (page) => page.getByText(/^Updates: live\./),
  },
  {
    path: "/findings",
    link: "Findings",
    heading: "Findings",
    // The escalations' live stream is open.
    ready: (page) => page.getByText(/^Updates: live\./),
  },
  {
    path: "/governance",
    link: "Governance",
    heading: "Governance",
    ready: (page) => page.getByRole("heading", { name: "Decisions by rule" }),
  },
  {
    path: "/carcel",
    link: "Carcel",
    heading: "Carcel",
    ready: (page) => page.getByRole("heading", { name: "By reason and topic" }),
  },
  {
    path: "/custody",
    link: "Custody",
    heading: "Custody",
    ready: (page) => page.getByRole("button", { name: "Show chain" }),
  },
];

/** Links in the navigation that are not pages to smoke-check. */
export const NOT_PAGES = new Set(["Sign in", "Sign in as another"]);

/**
 * Open `spec`'s page from the navigation (a client-side route: the page is not reloaded)
 * and wait until it shows its heading and `ready`.
 * @param {Page} page
 * @param {PageSpec} spec
 */
export async function open(page, spec) {
  await page.getByRole("navigation", { name: "Pages" }).getByRole("link", { name: spec.link, exact: true }).click();
  await page.waitForURL((url) => url.pathname === spec.path);
  await page.getByRole("heading", { name: spec.heading, level: 1 }).waitFor();
  await spec.ready(page).first().waitFor();
}

/**
 * The spec of the page with navigation link `link`; throws naming the file to add it to.
 * @param {string} link
 * @returns {PageSpec}
 */
export function byLink(link) {
  const spec = PAGES.find((p) => p.link === link);
  if (spec === undefined) throw new Error(`page ${JSON.stringify(link)} has no entry in console/web/e2e/pages.mjs`);
  return spec;
}
