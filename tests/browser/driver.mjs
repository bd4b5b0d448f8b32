// A Playwright driver for the project's browser tests, spoken to over
// standard input and output, one JSON object per line, so that the tests
// (trial, Python) keep every assertion and drive the browser and the node's
// other clients from one place.
//
// Request:  {"id": 1, "op": "goto", "page": "agent", ...arguments}
// Answer:   {"id": 1, "ok": true, "value": ...} or {"id": 1, "ok": false, "error": "..."}
//
// It drives Debian's Chromium (CHROMIUM, default /usr/bin/chromium) through
// playwright-core, installed by `npm ci` in frontend/; it never downloads a
// browser. Each page records the console errors and uncaught exceptions it saw
// ("errors" op).
import { createRequire } from "node:module";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, "..", "..", "frontend", "package.json"));
const { chromium } = require("playwright-core");

const profile = mkdtempSync(join(tmpdir(), "msgplatform-browser-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1280, height: 800 },
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const pages = new Map();
const errors = new Map();

async function page(name) {
  let p = pages.get(name);
  if (!p) {
    p = await context.newPage();
    const seen = [];
    p.on("pageerror", (e) => seen.push(`pageerror: ${e.message}`));
    p.on("console", (m) => { if (m.type() === "error") seen.push(`console: ${m.text()}`); });
    pages.set(name, p);
    errors.set(name, seen);
  }
  return p;
}

const TIMEOUT = 15000;
const ops = {
  async goto(r) { await (await page(r.page)).goto(r.url); return (await page(r.page)).url(); },
  async fill(r) { await (await page(r.page)).locator(r.selector).first().fill(r.value, { timeout: TIMEOUT }); },
  async click(r) { await (await page(r.page)).locator(r.selector).first().click({ timeout: TIMEOUT }); },
  async select(r) { await (await page(r.page)).locator(r.selector).first().selectOption(r.value, { timeout: TIMEOUT }); },
  async press(r) { await (await page(r.page)).locator(r.selector).first().press(r.key, { timeout: TIMEOUT }); },
  // Waits until `count` elements match (with `text` in them, if given).
  async waitFor(r) {
    let loc = (await page(r.page)).locator(r.selector);
    if (r.text !== undefined) loc = loc.filter({ hasText: r.text });
    const n = r.count ?? 1;
    if (n === 0) { await loc.first().waitFor({ state: "detached", timeout: r.timeout ?? TIMEOUT }); return 0; }
    await loc.nth(n - 1).waitFor({ state: r.state ?? "visible", timeout: r.timeout ?? TIMEOUT });
    return await loc.count();
  },
  async count(r) { return await (await page(r.page)).locator(r.selector).count(); },
  async texts(r) { return await (await page(r.page)).locator(r.selector).allTextContents(); },
  async attribute(r) {
    return await (await page(r.page)).locator(r.selector).first().getAttribute(r.name, { timeout: TIMEOUT });
  },
  // Runs a function's source in the page: `expression` is "(arg) => ...".
  async evaluate(r) { return await (await page(r.page)).evaluate(`(${r.expression})(${JSON.stringify(r.arg ?? null)})`); },
  // Waits until a function's source ("(arg) => ...") returns a truthy value in
  // the page, asking every 100 ms (waitForFunction would need the page's CSP
  // to allow eval; evaluate does not).
  async waitUntil(r) {
    const p = await page(r.page);
    const deadline = Date.now() + (r.timeout ?? TIMEOUT);
    for (;;) {
      const value = await p.evaluate(`(${r.expression})(${JSON.stringify(r.arg ?? null)})`);
      if (value) return value;
      if (Date.now() > deadline) throw new Error(`waitUntil: still ${JSON.stringify(value)} after ${r.timeout ?? TIMEOUT} ms`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  },
  async screenshot(r) { await (await page(r.page)).screenshot({ path: r.path, fullPage: true }); return r.path; },
  async errors(r) { await page(r.page); return errors.get(r.page); },
  async closePage(r) { const p = pages.get(r.page); if (p) { await p.close(); pages.delete(r.page); } },
};

async function quit(code) {
  await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
  process.exit(code);
}

const lines = createInterface({ input: process.stdin });
process.stdout.write(JSON.stringify({ id: 0, ok: true, value: "ready" }) + "\n");
for await (const line of lines) {
  if (!line.trim()) continue;
  let request;
  try { request = JSON.parse(line); } catch (e) { continue; }
  let answer;
  try {
    const op = ops[request.op];
    if (!op) throw new Error(`no such op ${request.op}`);
    answer = { id: request.id, ok: true, value: (await op(request)) ?? null };
  } catch (e) {
    answer = { id: request.id, ok: false, error: String(e && e.message || e) };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
}
await quit(0);
