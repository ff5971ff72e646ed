// Check that a ctprof SVG flame graph page fits the window, in Debian's
// headless chromium.
//
//   node page.js GRAPH.svg WIDTH HEIGHT SEARCH_REGEX SCREENSHOT.png
//
// Presses Ctrl-F as soon as the page starts loading (the prompt is answered
// with SEARCH_REGEX), then reports: the graph's width against the window's,
// where the controls, legend and details line are on screen at load and
// after scrolling to the top, how far the page opened scrolled, where the
// root frame is, and what "Matched:" said.  Prints one JSON object.
// Never downloads a browser: CHROMIUM (default /usr/bin/chromium) is used.
"use strict";
const fs = require("fs");
const os = require("os");
const path = require("path");
const { chromium } = require("playwright-core");

const [svgPath, width, height, regex, shotPath] = process.argv.slice(2);

function boxes(page) {
  return page.evaluate(() => {
    const out = { innerWidth: window.innerWidth, innerHeight: window.innerHeight, scrollY: window.scrollY,
                  svgWidth: document.documentElement.width.baseVal.value,
                  svgHeight: document.documentElement.height.baseVal.value };
    for (const id of ["title", "search", "legend", "details", "matched", "subtitle"]) {
      const el = document.getElementById(id);
      if (!el) continue;
      const r = el.getBoundingClientRect();
      out[id] = { left: r.left, right: r.right, top: r.top, bottom: r.bottom, text: el.textContent };
    }
    // the root frame ("all"): the widest box
    let root = null;
    for (const g of document.querySelectorAll("#frames > g")) {
      const t = g.querySelector("title").textContent;
      if (t.startsWith("all (")) { root = g.querySelector("rect").getBoundingClientRect(); break; }
    }
    if (root) out.root = { left: root.left, right: root.right, top: root.top, bottom: root.bottom };
    return out;
  });
}

async function main() {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "ctprof-chromium-"));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    viewport: { width: parseInt(width, 10), height: parseInt(height, 10) },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const result = { errors: [], requests: [], dialogs: 0 };
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.on("pageerror", (e) => result.errors.push(String(e)));
    page.on("console", (m) => { if (m.type() === "error") result.errors.push(m.text()); });
    page.on("request", (r) => { if (!r.url().startsWith("file:")) result.requests.push(r.url()); });
    page.on("dialog", async (d) => { result.dialogs += 1; await d.accept(regex); });
    const t0 = Date.now();
    await page.goto("file://" + path.resolve(svgPath), { waitUntil: "commit" });
    // Search as soon as anything of the page is there.
    await page.waitForSelector("#search", { state: "attached", timeout: 30000 });
    result.searchAt = Date.now() - t0;
    await page.keyboard.press("Control+f");
    await page.waitForFunction(() => {
      const m = document.getElementById("matched");
      return m && m.textContent.startsWith("Matched");
    }, null, { timeout: 30000 });
    result.matchedAt = Date.now() - t0;
    await page.waitForLoadState("load");
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
    result.atLoad = await boxes(page);
    // hover the root frame (in view at the base): the details line says what it is
    const root = result.atLoad.root;
    await page.mouse.move((root.left + root.right) / 2, (root.top + root.bottom) / 2);
    result.details = await page.evaluate(() => document.getElementById("details").textContent);
    result.detailsBox = await page.evaluate(() => document.getElementById("details").getBoundingClientRect().toJSON());
    await page.mouse.move(1, 1);
    // scroll to the top: controls and details line still in view
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
    result.atTop = await boxes(page);
    // a narrower window: the graph follows
    await page.setViewportSize({ width: Math.floor(parseInt(width, 10) * 0.75), height: parseInt(height, 10) });
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
    result.resized = await boxes(page);
    await page.screenshot({ path: shotPath, timeout: 15000 });
  } finally {
    await context.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
  process.stdout.write(JSON.stringify(result) + "\n");
}

main().catch((e) => { console.error(e && e.stack || String(e)); process.exit(1); });
