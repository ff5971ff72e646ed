// Open a speedscope JSON file in speedscope's own viewer (the npm package's
// dist/release) in Debian's headless chromium, served from 127.0.0.1 only.
//
//   node speedscope.js PROFILE.json SCREENSHOT.png
//
// Prints {errors, title, requests} as JSON: page errors, the document title
// speedscope sets once the profile is loaded, and any non-local requests.
"use strict";
const fs = require("fs");
const os = require("os");
const path = require("path");
const http = require("http");
const { chromium } = require("playwright-core");

const [profilePath, shotPath] = process.argv.slice(2);
const release = path.join(__dirname, "node_modules", "speedscope", "dist", "release");
const types = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".json": "application/json",
                ".wasm": "application/wasm", ".png": "image/png", ".woff2": "font/woff2", ".ico": "image/x-icon" };

const server = http.createServer((req, res) => {
  const url = decodeURIComponent(req.url.split("?")[0].split("#")[0]);
  const file = url === "/profile.json" ? profilePath : path.join(release, path.normalize(url).replace(/^\/+/, ""));
  if (!file.startsWith(release) && file !== profilePath) { res.writeHead(403); res.end(); return; }
  fs.readFile(file, (err, body) => {
    if (err) { res.writeHead(404); res.end(); return; }
    res.writeHead(200, { "Content-Type": types[path.extname(file)] || "application/octet-stream" });
    res.end(body);
  });
});

async function main() {
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const base = `http://127.0.0.1:${server.address().port}`;
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "ctprof-chromium-"));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1200, height: 700 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const result = { errors: [], requests: [] };
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.on("pageerror", (e) => result.errors.push(String(e)));
    page.on("console", (m) => { if (m.type() === "error") result.errors.push(m.text()); });
    page.on("request", (r) => { if (!r.url().startsWith(base)) result.requests.push(r.url()); });
    page.on("dialog", async (d) => { result.errors.push("dialog: " + d.message()); await d.dismiss(); });
    await page.goto(`${base}/index.html#profileURL=${encodeURIComponent(base + "/profile.json")}`);
    await page.waitForFunction(() => document.title.includes(" - speedscope") ||
                                     document.body.innerText.includes("Something went wrong"),
                               null, { timeout: 15000 }).catch(() => {});
    await page.waitForTimeout(300);
    result.title = await page.title();
    result.text = (await page.evaluate(() => document.body.innerText)).slice(0, 300);
    await page.screenshot({ path: shotPath, timeout: 15000 });
  } finally {
    await context.close();
    server.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
  process.stdout.write(JSON.stringify(result) + "\n");
}

main().catch((e) => { console.error(e && e.stack || String(e)); server.close(); process.exit(1); });
