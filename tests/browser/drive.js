// Drive a ctprof SVG flame graph in Debian's headless chromium.
//
//   node drive.js GRAPH.svg SCREENSHOT.png FRAME_NAME SEARCH_REGEX
//
// Clicks FRAME_NAME to zoom, hovers it, resets the zoom, searches with
// Ctrl-F, takes a screenshot, and prints one JSON object with what it saw.
// Never downloads a browser: CHROMIUM (default /usr/bin/chromium) is used.
"use strict";
const fs = require("fs");
const os = require("os");
const path = require("path");
const { chromium } = require("playwright-core");

const [svgPath, shotPath, frameName, regex] = process.argv.slice(2);

async function frameState(page) {
  return page.evaluate(() => {
    const out = [];
    for (const g of document.querySelectorAll("#frames > g")) {
      const title = g.querySelector("title").textContent;
      const rect = g.querySelector("rect");
      const text = g.querySelector("text");
      out.push({
        name: title.slice(0, title.lastIndexOf(" (")),
        x: parseFloat(rect.getAttribute("x")),
        width: parseFloat(rect.getAttribute("width")),
        cls: g.getAttribute("class") || "",
        fill: rect.getAttribute("fill"),
        label: text ? text.textContent : "",
      });
    }
    return out;
  });
}

async function main() {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "ctprof-chromium-"));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1200, height: 700 },   // the graph fits the window: 1200 px wide
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const result = { errors: [], requests: [] };
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.on("pageerror", (e) => result.errors.push(String(e)));
    page.on("console", (m) => { if (m.type() === "error") result.errors.push(m.text()); });
    page.on("request", (r) => { if (!r.url().startsWith("file:")) result.requests.push(r.url()); });
    let dialogs = 0;
    page.on("dialog", async (d) => { dialogs += 1; result.dialogType = d.type(); await d.accept(regex); });
    await page.goto("file://" + path.resolve(svgPath));
    result.initial = await frameState(page);

    // click the frame to zoom
    const target = await page.evaluateHandle((name) => {
      for (const g of document.querySelectorAll("#frames > g")) {
        const t = g.querySelector("title").textContent;
        if (t.slice(0, t.lastIndexOf(" (")) === name) return g.querySelector("rect");
      }
      return null;
    }, frameName);
    const box = await target.asElement().boundingBox();
    await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
    result.details = await page.evaluate(() => document.getElementById("details").textContent);
    await page.mouse.click(box.x + box.width / 2, box.y + box.height / 2);
    result.zoomed = await frameState(page);
    result.unzoomClassWhenZoomed = await page.evaluate(() => document.getElementById("unzoom").getAttribute("class"));

    // reset zoom with the button
    const reset = await page.$("#unzoom");
    const rbox = await reset.boundingBox();
    await page.mouse.click(rbox.x + rbox.width / 2, rbox.y + rbox.height / 2);
    result.reset = await frameState(page);
    result.unzoomClassAfterReset = await page.evaluate(() => document.getElementById("unzoom").getAttribute("class"));

    // search with Ctrl-F (answers the prompt with the regex)
    await page.mouse.move(5, 5);
    await page.keyboard.press("Control+f");
    await page.waitForFunction(() => document.getElementById("matched").textContent.startsWith("Matched"),
                               null, { timeout: 5000 });
    result.dialogs = dialogs;
    result.matched = await page.evaluate(() => document.getElementById("matched").textContent);
    result.searched = await frameState(page);
    // fullPage screenshots hang on SVG documents: size the viewport instead
    const size = await page.evaluate(() => [document.documentElement.width.baseVal.value,
                                            document.documentElement.height.baseVal.value]);
    await page.setViewportSize({ width: Math.ceil(size[0]), height: Math.min(4000, Math.ceil(size[1])) });
    await page.screenshot({ path: shotPath, timeout: 15000 });
  } finally {
    await context.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
  process.stdout.write(JSON.stringify(result) + "\n");
}

main().catch((e) => { console.error(e && e.stack || String(e)); process.exit(1); });
